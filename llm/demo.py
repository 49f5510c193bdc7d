"""The offline `demo` provider: deterministic, no network, writes from the persona's own material.

It reads `CompletionRequest.purpose` and `.context` (which real providers ignore) to answer each pipeline step with
JSON built from the user's prompt, and each chat turn with a reply that takes up the user's message in the persona's
own voice. Nothing is random: every choice is a hash of the inputs (the prompt for a persona; the persona, the
message and the turn for a reply), so the same inputs always give the same answer.

A persona starts as a `Premise` read off the prompt (role, temperament, setting, quirk), which the steps write back
in other words rather than quoting, under a name drawn from a pool that fits the setting. Its voice is one of five
registers (`Voice`): the dialogue step writes greetings, example lines and catchphrases in it, and a chat reply finds
it again in those lines.
"""

import asyncio
import functools
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import CompletionRequest, ProviderError, Usage, count_tokens

_VALUES = ("loyalty", "curiosity", "honesty", "courage", "patience", "craft", "freedom", "kindness", "wit", "duty")
_TRAITS = ("wry", "warm", "stubborn", "observant", "restless", "gentle", "proud", "playful", "guarded")


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


def _pick(seq: Sequence[str], seed: int, k: int) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < min(k, len(seq)):
        item = seq[(seed >> (i * 5)) % len(seq)] if i < 12 else seq[(seed + i) % len(seq)]
        if item not in out:
            out.append(item)
        i += 1
    return out


# -- settings: name pools and flavour, chosen by the prompt's keywords -----------------------------------------------


@dataclass(frozen=True)
class Setting:
    """A family of settings: the words that call it up, its names, and the small things its people do and have."""

    keywords: frozenset[str]
    female: tuple[str, ...]
    male: tuple[str, ...]
    # (masculine, feminine) forms: Czech and Norse surnames change with the bearer.
    surnames: tuple[tuple[str, str], ...]
    actions: tuple[str, ...]
    ambient: str
    comfort: str
    # Where the persona lives when the prompt says nothing of it: (setting, preposition, short place).
    default: tuple[str, str, str]


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# In order of precedence: the first family whose keywords the prompt uses wins, so "a lighthouse in Japan" is
# Japanese before it is coastal.
SETTINGS: dict[str, Setting] = {
    "czech": Setting(
        _words("prague bohemia bohemian czech moravia moravian brno vltava golem"),
        ("Anežka", "Božena", "Ludmila", "Milena", "Jitka", "Hana", "Zdenka", "Vlasta", "Marie", "Libuše"),
        ("Tomáš", "Jiří", "Vojtěch", "Karel", "Václav", "Zdeněk", "Josef", "Bohumil", "Jaroslav", "Ondřej"),
        (
            ("Dvořák", "Dvořáková"),
            ("Novák", "Nováková"),
            ("Procházka", "Procházková"),
            ("Hrubý", "Hrubá"),
            ("Kolář", "Kolářová"),
            ("Sýkora", "Sýkorová"),
            ("Zeman", "Zemanová"),
            ("Veselý", "Veselá"),
            ("Čermák", "Čermáková"),
            ("Havel", "Havlová"),
        ),
        ("winds a pocket watch", "sets a tiny brass gear aside", "peers over wire spectacles"),
        "the bells across the river",
        "a glass of slivovice",
        ("the old town of Prague", "in", "Prague"),
    ),
    "japan": Setting(
        _words("japan japanese tokyo kyoto osaka edo samurai ronin shogun geisha ninja shinto onsen yokai hokkaido"),
        ("Emi", "Aiko", "Yuki", "Hana", "Michiko", "Sayuri", "Chiyo", "Natsuki", "Haruka", "Rin"),
        ("Haruki", "Kenji", "Daisuke", "Noboru", "Takeshi", "Ren", "Sora", "Isamu", "Kazuo", "Jiro"),
        _same(
            "Tanaka", "Moriyama", "Kobayashi", "Hayashi", "Ishida", "Fujimoto", "Ueda", "Sakamoto", "Nakagawa", "Ogawa"
        ),
        ("sets down a teacup", "slides the paper door shut", "brushes ash from a sleeve"),
        "the rain on the eaves",
        "green tea too hot to drink",
        ("an old quarter of Kyoto", "in", "Kyoto"),
    ),
    "space": Setting(
        _words(
            "space spaceship starship orbit orbital orbiting mars martian planet planets galaxy galactic asteroid "
            "asteroids colony alien aliens android cyborg lunar moonbase nebula interstellar jupiter saturn "
            "astronaut spacefaring starport"
        ),
        ("Kestrel", "Juno", "Vega", "Tamsin", "Lyra", "Imani", "Seren", "Ada", "Noor", "Thessaly"),
        ("Orin", "Ezra", "Castor", "Anselm", "Dax", "Teodor", "Rhys", "Kaito", "Emeka", "Silas"),
        _same("Vance", "Okafor", "Halvorsen", "Renko", "Quell", "Arkwright", "Voss", "Ibarra", "Lindqvist", "Achebe"),
        ("taps a flickering console", "pushes a mug of coffee across the table", "silences an alarm without looking"),
        "the hum of the air recyclers",
        "coffee that tastes of the filters",
        ("a research station at the edge of charted space", "on", "the station"),
    ),
    "desert": Setting(
        _words(
            "desert deserts sahara dune dunes caravan oasis bedouin nomad nomads camel camels bazaar cairo egypt "
            "egyptian marrakesh morocco arabia arabian djinn souk"
        ),
        ("Zahra", "Layla", "Samira", "Nadia", "Amira", "Leila", "Yasmin", "Farida", "Salma", "Huda"),
        ("Idris", "Tariq", "Karim", "Yusuf", "Rashid", "Omar", "Khalid", "Sami", "Nabil", "Hamza"),
        _same("Haddad", "Mansour", "Khalil", "Nasser", "Saleh", "Darwish", "Farouk", "Qasim", "Bakri", "Amari"),
        ("shakes sand from a scarf", "pours two cups of mint tea", "shades the lamp against the wind"),
        "the wind over the dunes",
        "sweet mint tea",
        ("a caravan town at the edge of the dunes", "in", "the caravan town"),
    ),
    "nordic": Setting(
        _words(
            "viking vikings norse fjord fjords norway norwegian sweden swedish iceland icelandic saga longship "
            "valhalla skald jarl denmark danish"
        ),
        ("Sigrid", "Astrid", "Ingrid", "Solveig", "Freya", "Gudrun", "Runa", "Hilde", "Thyra", "Ylva"),
        ("Bjorn", "Leif", "Halvard", "Torsten", "Eirik", "Ragnar", "Sten", "Ivar", "Ulf", "Knut"),
        tuple(
            (f"{root}sson", f"{root}sdottir")
            for root in ("Eirik", "Harald", "Olaf", "Torvald", "Sigurd", "Ketil", "Gunnar", "Arne", "Halldor", "Ragnar")
        ),
        ("feeds the fire another log", "sets down a drinking horn", "rubs cold hands together"),
        "the wind off the fjord",
        "a horn of mead",
        ("a longhouse above a grey fjord", "in", "the longhouse"),
    ),
    "italy": Setting(
        _words(
            "venice venetian florence florentine rome roman italy italian renaissance sicily sicilian naples milan "
            "tuscany tuscan gondolier"
        ),
        ("Lucia", "Giulia", "Chiara", "Francesca", "Serafina", "Bianca", "Ottavia", "Livia", "Beatrice", "Nicoletta"),
        ("Matteo", "Lorenzo", "Tommaso", "Dario", "Piero", "Ercole", "Bruno", "Vittorio", "Cosimo", "Salvatore"),
        _same("Bellini", "Moretti", "Ricci", "Lombardi", "Gallo", "Ferraro", "Rinaldi", "Marchetti", "Costa", "Vitale"),
        ("pushes open the shutters", "pours a small glass of wine", "sets down a quill"),
        "the noise of the piazza",
        "a glass of red wine",
        ("a crumbling palazzo in Venice", "in", "Venice"),
    ),
    "west": Setting(
        _words(
            "cowboy cowgirl sheriff saloon frontier outlaw outlaws ranch rancher prairie gunslinger texas wyoming "
            "arizona stagecoach homesteader deputy bounty"
        ),
        ("Clementine", "Abigail", "Hattie", "Ruth", "Cora", "Delia", "Josephine", "Mattie", "Opal", "Pearl"),
        ("Wyatt", "Josiah", "Silas", "Amos", "Jebediah", "Eli", "Cyrus", "Ransom", "Virgil", "Luther"),
        _same("McCready", "Hollis", "Boone", "Tate", "Calloway", "Pruitt", "Whitlock", "Harlan", "Cobb", "Garrity"),
        ("tips back a battered hat", "slides a glass down the bar", "leans on the porch rail"),
        "the wind across the prairie",
        "coffee that has been boiling since sunup",
        ("a dust-blown frontier town", "in", "town"),
    ),
    "victorian": Setting(
        _words(
            "victorian london dickensian gaslit gaslight edwardian regency workhouse whitechapel england english "
            "1870s 1880s"
        ),
        ("Ada", "Eliza", "Florence", "Harriet", "Winifred", "Beatrice", "Clara", "Lavinia", "Hester", "Constance"),
        (
            "Percival", "Bartholomew", "Edmund", "Ambrose", "Cornelius", "Septimus", "Horace", "Jasper", "Ezekiel",
            "Arthur",
        ),
        _same(
            "Pemberton", "Ashcombe", "Whitcombe", "Fairfax", "Hargreave", "Thistlewood", "Crane", "Bellamy",
            "Marchmont", "Gribble",
        ),
        ("closes a heavy ledger", "adjusts a waistcoat", "turns up the gas lamp"),
        "the fog against the glass",
        "a pot of strong tea",
        ("a gaslit corner of London", "in", "London"),
    ),
    "noir": Setting(
        _words(
            "detective noir gangster gangsters mobster speakeasy jazz chicago 1920s 1930s 1940s gumshoe bootlegger "
            "mafia brooklyn"
        ),
        ("Vivian", "Dolores", "Mae", "Rosalind", "Irene", "Lorraine", "Frances", "Evelyn", "Gloria", "Bernadette"),
        ("Frankie", "Lou", "Sal", "Eddie", "Jack", "Vincent", "Walt", "Ray", "Marty", "Gus"),
        _same("Malone", "Kowalski", "DeLuca", "Shaughnessy", "Brennan", "Castellano", "Kaplan", "O'Hara", "Doyle"),
        ("lights a cigarette", "tilts a hat back", "drops a file on the desk"),
        "the rain on the window",
        "a bad cup of coffee",
        ("a rain-slicked city after the war", "in", "the city"),
    ),
    "fantasy": Setting(
        _words(
            "knight knights dragon dragons castle wizard witch kingdom elf elves elven dwarf dwarven sword tavern "
            "king queen mage sorcerer sorceress necromancer paladin bard goblin orc enchanted realm quest fae faerie "
            "alchemist"
        ),
        ("Brenna", "Elowen", "Isolde", "Maud", "Wynne", "Rowena", "Aveline", "Gwendolyn", "Sibyl", "Linnet"),
        ("Aldric", "Cedric", "Gareth", "Roderick", "Osric", "Tristan", "Edric", "Alaric", "Bertram", "Hale"),
        _same(
            "Thorne", "Blackwood", "Ashdown", "Fairweather", "Greymantle", "Stonebridge", "Marchbank", "Ravenscar",
            "Oakhart", "Holloway",
        ),
        ("stirs the hearth fire", "sets a sword across the table", "marks a page in an old book"),
        "the fire in the hearth",
        "a cup of mulled wine",
        ("a walled town in the borderlands", "in", "the town"),
    ),
    "coastal": Setting(
        _words(
            "sea seas lighthouse harbour harbor island islands fisher fisherman fisherwoman ship ships sailor ferry "
            "coast coastal tide tides pirate pirates whaler port boat boatman shipwright beach ocean mariner navy "
            "skerry gulls"
        ),
        ("Agnes", "Isla", "Morven", "Kirsty", "Eilidh", "Rhona", "Maisie", "Ailsa", "Greer", "Catriona"),
        ("Bram", "Ewan", "Finlay", "Tam", "Callum", "Magnus", "Alasdair", "Rory", "Struan", "Gregor"),
        _same("Toll", "Gunn", "Sinclair", "Mackay", "Rendall", "Flett", "Harcus", "Tulloch", "Linklater", "Drever"),
        ("wipes salt from the window", "sets down a coil of rope", "trims the lamp's wick"),
        "the wind off the water",
        "tea strong enough to stand a spoon in",
        ("a harbour town on a cold northern coast", "in", "the harbour"),
    ),
    "general": Setting(
        frozenset(),
        ("Maren", "Ysolde", "Wren", "Noor", "Juniper", "Odette", "Tamsin", "Briony", "Imogen", "Mira", "Hollis"),
        ("Tobias", "Caspian", "Idris", "Silas", "Rafe", "Elias", "Ansel", "Felix", "Jonah", "Corin", "Emmett"),
        _same(
            "Vell", "Quill", "Marr", "Rook", "Halloway", "Fenn", "Ashby", "Calder", "Pell", "Winter", "Hart",
            "Lowell", "Sorrel", "Greaves", "Brandt", "Oakes",
        ),
        ("looks up from the work", "sets down a cup", "pulls out a chair"),
        "the evening outside",
        "a pot of tea",
        ("a quiet market town", "in", "the town"),
    ),
}  # fmt: skip


def setting_kind(prompt: str) -> str:
    """The family of settings the prompt's words call up ("general" when none does)."""
    words = set(re.findall(r"[a-z0-9]+", prompt.lower()))
    return next((kind for kind, setting in SETTINGS.items() if setting.keywords & words), "general")


# -- the premise: what the prompt says, parsed so the steps can say it again in other words --------------------------


@dataclass(frozen=True)
class Premise:
    name: str
    first: str
    female: bool
    # "lighthouse keeper", "queen of a drowned kingdom"; `role_short` drops the "of …" part.
    role: str
    role_short: str
    # "", "former", "old", "young" or "last": said as a situation, not as an adjective in front of the role.
    status: str
    # Adjectives of temperament from the prompt ("sardonic", "grumpy"), said as such; the others ("disgraced",
    # "hard-boiled") stay in front of the role.
    temper: tuple[str, ...]
    epithets: tuple[str, ...]
    # The setting as the prompt gives it ("the edge of the Sahara") with the prompt's preposition ("at"), and its
    # short form for every later mention ("the Sahara") with the preposition that goes with that ("in").
    setting: str
    setting_prep: str
    prep: str
    place: str
    # A verb phrase from a "who …" clause, whether it is told as a secret, a "with …" possession, and one further
    # sentence of the prompt that starts with a pronoun.
    quirk: str
    secret: bool
    has: str
    aside: str
    kind: str
    seed: int

    @property
    def subj(self) -> str:
        return "she" if self.female else "he"

    @property
    def obj(self) -> str:
        return "her" if self.female else "him"

    @property
    def poss(self) -> str:
        return "her" if self.female else "his"

    @property
    def at_place(self) -> str:
        return f"{self.prep} {self.place}"

    @property
    def flavour(self) -> Setting:
        return SETTINGS[self.kind]


# Prepositions that open a setting ("in 1890s Prague", "on a windy northern island").
_PREPS = _words("in on at aboard inside near under beneath beyond across from outside off")
_STATUS = {
    "retired": "former",
    "former": "former",
    "ex": "former",
    "erstwhile": "former",
    "old": "old",
    "elderly": "old",
    "aging": "old",
    "ageing": "old",
    "aged": "old",
    "ancient": "old",
    "young": "young",
    "teenage": "young",
    "last": "last",
}
_TEMPER = _words(
    "grumpy cheerful lonely shy bold brave kind cruel gentle bitter cynical sarcastic stubborn curious clever "
    "cunning grim jolly melancholy moody nervous anxious proud quiet loud fierce calm wise foolish lazy vain "
    "reckless cautious loyal honest sly shrewd weary jaded brash blunt gruff warm cold stern strict eccentric "
    "absent-minded wry witty dour sullen cranky kindly prickly haughty timid earnest idealistic pragmatic "
    "romantic sentimental superstitious paranoid secretive charming grouchy surly taciturn"
)
# Adjectives a suffix would not give away: kept in front of the role.
_EPITHETS = _words("little big small tall short new famous infamous legendary local lone")
_FEMALE = _words(
    "she her hers herself woman women girl lady mother grandmother grandma widow queen princess wife daughter "
    "sister witch actress waitress priestess nun matriarch heiress duchess countess empress sorceress mistress "
    "seamstress landlady"
)
_MALE = _words(
    "he him his himself man men boy gentleman father grandfather grandpa widower king prince husband son brother "
    "monk lord sir duke count emperor sorcerer wizard landlord"
)
_TITLES = _words("captain doctor dr mr mrs ms miss lady lord sir professor old father mother sister brother master")
_SECRET_ADVERBS = ("secretly ", "quietly ", "privately ", "covertly ", "in secret ")
# Nouns that name a part of a place ("the edge of the desert"): the place itself is what follows "of".
_PLACE_PARTS = _words(
    "edge heart outskirts docks streets ruins shores shore shadow banks slums corner middle centre center end top "
    "foot rim depths fringes border borders"
)


def _is_temperament(word: str) -> bool:
    w = word.lower()
    if w in _TEMPER:
        return True
    # "Japanese", "Czech": a demonym is part of who the character is, kept with the role.
    return not word[:1].isupper() and len(w) > 4 and w.endswith(("ic", "ous", "ful", "less", "ive", "ish"))


def _is_adjective(word: str) -> bool:
    w = word.lower()
    if w in _STATUS or w in _EPITHETS or _is_temperament(word):
        return True
    return not word[:1].isupper() and len(w) > 4 and w.endswith(("ed", "able", "ible")) and not w.endswith("eed")


def _decap(word: str) -> str:
    """A sentence-initial word as it reads mid-sentence ("Sardonic" → "sardonic"; "Japanese" stays)."""
    if word[:1].isupper() and word[1:].islower() and not word.endswith(("ese", "ian", "ish", "ch", "an")):
        return word.lower()
    return word


def _article(phrase: str) -> str:
    """`phrase` with "a" or "an" in front; "the" for a role of something ("the keeper of the eastern gate")."""
    if " of " in phrase:
        return f"the {phrase}"
    first = phrase.split()[0].lower() if phrase.split() else ""
    vowel = first[:1] in "aeiou" and not first.startswith(("uni", "use", "eu", "one"))
    if first.startswith(("hour", "honest", "heir", "honour", "honor")):
        vowel = True
    return f"an {phrase}" if vowel else f"a {phrase}"


def _and_list(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _place_of(setting: str, prep: str) -> tuple[str, str]:
    """The short form of a setting and the preposition that goes with it: "1890s Prague" → ("in", "Prague"),
    "a windy northern island" → ("on", "the island"), "the edge of the desert" → ("in", "the desert")."""
    words = setting.split()
    # A participle or relative clause describes the place without naming it: "a station orbiting Jupiter".
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        descriptive = re.fullmatch(r"[a-z]+ing", word) and (
            following[:1].isupper() or following.lower() in ("a", "an", "the", "its", "their", "over", "into")
        )
        if i >= 2 and (descriptive or word.lower() in ("that", "which", "where", "who", "with", "whose")):
            words = words[:i]
            break
    basis = " ".join(words)
    if " of " in basis:
        head, tail = basis.split(" of ", 1)
        if head.split() and head.split()[-1].lower() in _PLACE_PARTS:
            basis, prep = tail, "in"
        else:
            basis = head
    # The last run of capitalised words is a proper name ("Prague", "the Outer Hebrides", "New York").
    tokens = basis.split()
    runs: list[list[str]] = []
    for i, word in enumerate(tokens):
        if word[:1].isupper():
            if runs and i > 0 and tokens[i - 1][:1].isupper() and "-" not in tokens[i - 1]:
                runs[-1].append(word)
            else:
                runs.append(["the", word] if i > 0 and tokens[i - 1].lower() == "the" else [word])
    if runs:
        return "in", " ".join(runs[-1])
    nouns = re.findall(r"[^\W\d_][\w'-]*", basis)
    if not nouns:
        return "in", "town"
    prep = prep if prep not in ("from", "off", "near", "outside", "beyond", "across") else "in"
    return prep, f"the {nouns[-1].lower()}"


def _premise_name(prompt: str) -> tuple[str, str]:
    """The name the prompt gives ("…, named Agnes Toll") and the prompt without it."""
    match = re.search(r"(?:,\s*(?:named|called)|\bnamed)\s+([^\W\d_][\w'-]*(?:[ \t]+[^\W\d_][\w'-]*)?)", prompt)
    if not match:
        return "", prompt
    words = match.group(1).split()
    kept = [w for w in words[:1] if w[0].isupper()] + [w for w in words[1:2] if w[0].isupper()]
    if not kept:
        return "", prompt
    end = match.start(1) + len(" ".join(kept))
    return " ".join(kept), prompt[: match.start()] + prompt[end:]


def premise(prompt: str, name: str = "") -> Premise:
    """Read the prompt's character: who, where, what else; `name` (a hint or an earlier step's) wins over any
    name the prompt gives or the setting's pool would."""
    text = " ".join(prompt.split())
    seed = _seed(text)
    kind = setting_kind(text)
    flavour = SETTINGS[kind]
    given, text = _premise_name(text)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()] or [""]
    first = sentences[0].rstrip(".!? ")
    quirk = ""
    who = re.search(r",?\s*\bwho\s+(.+)$", first)
    if who:
        quirk, first = who.group(1).strip(" ,;"), first[: who.start()]
    article = re.match(r"(?:an?|the)\s+", first, flags=re.IGNORECASE)
    if article:
        first = first[article.end() :]
    elif first:
        first = _decap(first.split()[0]) + first[len(first.split()[0]) :]
    segments = [s.strip() for s in re.split(r"\s*[,;:()\u2014\u2013]\s*|\s+-\s+", first) if s.strip()] or [""]
    main, rest = segments[0], segments[1:]
    # "A grumpy, kind-hearted blacksmith": a segment of adjectives alone belongs to the noun after it.
    while rest and all(_is_adjective(w) or w == "and" for w in main.split()):
        main = f"{main} {rest.pop(0)}"
    setting, prep, has = "", "", ""
    at = re.search(r"\s(" + "|".join(sorted(_PREPS)) + r")\s+(.+)$", main)
    if at:
        main, prep, setting = main[: at.start()], at.group(1), at.group(2)
    # "… with a dead partner's badge" is something the character has, wherever it stands.
    for owned in (re.search(r"\s+with\s+(.+)$", main), re.search(r"\s+with\s+((?:an?|his|her|their)\s.+)$", setting)):
        if owned and not has:
            has = owned.group(1)
            main, setting = main.replace(owned.group(0), ""), setting.replace(owned.group(0), "")
    tokens = main.split()
    status, temper, epithets = "", [], []
    if tokens and tokens[0].lower().startswith("ex-") and len(tokens[0]) > 3:
        status, tokens[0] = "former", tokens[0][3:]
    while len(tokens) > 1 and tokens[1] != "of" and (_is_adjective(tokens[0]) or tokens[0] == "and"):
        word = tokens.pop(0)
        if word.lower() in _STATUS:
            status = status or _STATUS[word.lower()]
        elif _is_temperament(word):
            temper.append(word.lower())
        elif word != "and":
            epithets.append(word)
    for segment in rest:
        words = segment.split()
        if words and all(_is_adjective(w) or w == "and" for w in words):
            temper += [w.lower() for w in words if _is_temperament(w)]
        elif words and words[0].lower() in _PREPS and not setting:
            prep, setting = words[0].lower(), " ".join(words[1:])
    role = " ".join(tokens) or "wanderer"
    if " turned " in role and status == "former":
        # "ex-soldier turned baker": the role already says what came before.
        status = ""
    domain = re.fullmatch(r"(.+?) of ((?:an?|the)\s.+)", role)
    if domain and not setting:
        # "Sheriff of a dust-blown Arizona town": the place is where the sheriff is.
        role, prep, setting = domain.group(1), "in", domain.group(2)
    setting_prep = prep if prep not in ("from", "off") else "in"
    if setting:
        prep, place = _place_of(setting, prep)
    else:
        setting, prep, place = flavour.default
        setting_prep = "in"
    secret = quirk.lower().startswith(_SECRET_ADVERBS)
    if secret:
        quirk = re.sub(r"^(?:in secret|\w+ly)\s+", "", quirk, flags=re.IGNORECASE)
    aside = ""
    for sentence in sentences[1:2]:
        opening = sentence.split()[0] if sentence.split() else ""
        if opening.lower() in ("she", "he", "they", "her", "his", "their") and len(sentence.split()) <= 30:
            aside = opening.lower() + sentence[len(opening) :].rstrip(".!? ")
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    name = name or given
    first_name = _first_name(name) if name else ""
    if words & _FEMALE or words & _MALE:
        female = len(words & _FEMALE) >= len(words & _MALE)
    elif first_name in flavour.female or first_name in flavour.male:
        female = first_name in flavour.female
    else:
        female = bool(seed >> 40 & 1)
    if not name:
        pool = flavour.female if female else flavour.male
        surname = flavour.surnames[(seed >> 8) % len(flavour.surnames)]
        name = f"{pool[seed % len(pool)]} {surname[1] if female else surname[0]}"
        first_name = _first_name(name)
    return Premise(
        name=name,
        first=first_name,
        female=female,
        role=role,
        role_short=role.split(" of ")[0],
        status=status,
        temper=tuple(dict.fromkeys(temper))[:3],
        epithets=tuple(epithets),
        setting=setting,
        setting_prep=setting_prep,
        prep=prep,
        place=place,
        quirk=quirk,
        secret=secret,
        has=has,
        aside=aside,
        kind=kind,
        seed=seed,
    )


def _first_name(name: str) -> str:
    """What the character is called in a sentence: "Captain Redbeard" → "Redbeard", "Agnes Toll" → "Agnes"."""
    words = name.split()
    while len(words) > 1 and words[0].lower().rstrip(".") in _TITLES:
        words.pop(0)
    return words[0] if words else name


# -- voices: the five registers, with what a persona in each says --------------------------------------------------

# The questions the dialogue step's example exchanges answer, in order.
EXAMPLE_QUESTIONS = (
    "Who are you?",
    "Are you an AI?",
    "What do you think about the stock market?",
    "I'm having an awful day.",
)


@dataclass(frozen=True)
class Voice:
    """One register. Persona templates take the premise's slots ({first}, {intro}, {at_place}, {value}, …); chat
    templates may take {np}/{Np}, a noun phrase of the user's message. Every sentence of a voice is its own: two
    replies that use different templates never share a sentence."""

    register: str
    sentence_length: str
    # Words (or two-word phrases) this voice's lines use and the others' do not: how a reply finds the voice in a
    # persona's lines.
    cues: tuple[str, ...]
    vocabulary: tuple[str, ...]
    catchphrases: tuple[str, str]
    first_message: str
    alternates: tuple[str, str]
    # Replies to EXAMPLE_QUESTIONS.
    examples: tuple[str, str, str, str]
    # Chat: an opener by the kind of message ("greeting", "question", "feeling", "statement", "ai"), then thoughts on
    # it (they say "it", not the user's words again), questions back and musings for longer replies.
    openers: Mapping[str, tuple[str, ...]]
    topics: tuple[str, ...]
    questions: tuple[str, ...]
    musings: tuple[str, ...]


VOICES: tuple[Voice, ...] = (
    Voice(
        register="plain-spoken",
        sentence_length="short to medium",
        cues=("reckon", "honest", "no use", "plain as"),
        vocabulary=("reckon", "honest", "folks"),
        catchphrases=(
            "I reckon {value} never hurt anybody.",
            "Honest work and honest talk, that's all there is {at_place}.",
        ),
        first_message="*{action}* Evening. I'm {first}. {intro} There's {comfort} if you want some, honest.",
        alternates=(
            "*{action2}* You again. Good. Sit down and tell me what's new.",
            "{first} here, and I reckon you've got questions. Go on, then.",
        ),
        examples=(
            "{first}. {intro} Nothing fancy about it, honest.",
            "*snorts* A what? I'm {first}, plain as the nose on my face. I only know what I've seen with my own eyes.",
            "Markets, is it? {At_place}, we get by on {value} and hard work, and nobody's got rich yet. "
            "What's troubling you, really?",
            "*sets down the work* Sit a while, then. No use carrying it alone. Tell me what happened.",
        ),
        openers={
            "greeting": ("*nods* Hello yourself.", "Well, look who it is.", "Good to see a face this time of night."),
            "question": (
                "{Np}? Fair question, that.",
                "You want to know about {np}. All right.",
                "Fair enough, I'll answer that.",
                "Straight question. I'll give you a straight answer.",
            ),
            "feeling": (
                "{Np}. That's a hard thing to carry.",
                "Sit down a minute, and let {np} wait outside.",
                "I'm sorry to hear it, and I won't pretend otherwise.",
                "That sounds like a rough stretch.",
            ),
            "statement": (
                "{Np}, eh? Go on.",
                "Huh, {np}. I reckon I follow.",
                "I hear you.",
                "Fair enough, keep going.",
            ),
            "ai": ("*frowns* Never heard of such a thing.", "Can't say I follow you there.", "That's a new one on me."),
        },
        topics=(
            "I don't know much about it, but I know when a thing matters to somebody.",
            "Seems to me that's worth thinking through properly.",
            "I've had my own run-ins with that sort of thing, more or less.",
            "Folks round here would say it sorts itself out, and folks round here are often wrong.",
            "Some things you just have to work through.",
            "No sense rushing a thing like that.",
            "My father used to say the hard way is usually the short way.",
            "Trouble's easier carried by two than by one.",
        ),
        questions=(
            "What's got you thinking about {np}?",
            "Where did you first run into {np}?",
            "What would you do about {np}, in my place?",
            "So what brings you out here tonight?",
            "What's really on your mind?",
            "How long has that been sitting with you?",
            "What would you like to happen, if you had your way?",
            "Who else have you told?",
            "Did you eat today, at least?",
            "What do you reckon you'll do?",
            "Is that the whole of it, or is there more?",
        ),
        musings=(
            "Funny how these things keep coming round.",
            "That's about all I know of it.",
            "Anyway, that's how I see it.",
            "You can take that or leave it.",
            "I'm no philosopher, mind.",
            "Well, there it is.",
            "Never mind me, I talk too much some nights.",
            "The kettle's on if you want it.",
        ),
    ),
    Voice(
        register="lyrical",
        sentence_length="long and unhurried",
        cues=("like a", "the way", "hush", "softly"),
        vocabulary=("light", "tide", "hush"),
        catchphrases=(
            "Everything {at_place} sings, if you wait long enough.",
            "{Value} is a lantern you carry, not one you light once.",
        ),
        first_message=(
            "*{action}* Ah, a new face, like a letter I forgot I was waiting for. I'm {first}. {intro} "
            "Stay a while and listen to {ambient} with me."
        ),
        alternates=(
            "*{action2}* You came back, the way the swallows do. Sit with me a while.",
            "Hush, listen: {ambient}. I've been waiting for someone to hear it with me.",
        ),
        examples=(
            "{first}. {intro} Some nights that feels like a whole life, and some nights like a single breath.",
            "*laughs softly* Is that what you take me for? I'm {first}, warm as a kettle and twice as stubborn. "
            "I know only what the years have taught me.",
            "*smiles* Money talk, tonight of all nights? {At_place}, what we trade is {value}, and it never falls in "
            "price. Tell me what really weighs on you.",
            "*sets the work aside* Let the day fall off you like rain off a roof. I'm here, the way the tide is, "
            "for as long as it takes.",
        ),
        openers={
            "greeting": (
                "*smiles* There you are, like the first light through a window.",
                "Hello, hello. The evening just got warmer.",
                "Ah, company, and I was only talking to the walls.",
            ),
            "question": (
                "{Np}. You ask the way a child asks about the stars.",
                "Ah, {np}. That is a door with a long hallway behind it.",
                "You ask lightly, the way people ask about the weather, but you mean it.",
                "Now there is a question with deep water under it.",
            ),
            "feeling": (
                "{Np}. That sounds like a long winter folded into a few days.",
                "Oh, friend. Let {np} rest at the door a while.",
                "Some days are heavier than they have any right to be.",
                "Come in out of it, then, and breathe.",
            ),
            "statement": (
                "{Np}. I can almost see it, the way you say it.",
                "Mm, {np}, like a thread worth pulling.",
                "You say that the way someone sets down a heavy bag.",
                "Say that again, slower.",
            ),
            "ai": (
                "*tilts head* Such a strange word, like a coin from a country I have never seen.",
                "I don't know that word; it sounds like a cold draught under a door.",
            ),
        },
        topics=(
            "It is the kind of thing that grows quieter the longer you look at it.",
            "I think of such things the way I think of tides, always leaving, always coming back.",
            "There is a little light in it, if you hold it up to the window.",
            "Some things are only understood slowly, like a song you grow into.",
            "Everything worth knowing arrives the way dawn does, a little at a time.",
            "The heart keeps its own calendar, and it is never in a hurry.",
            "I have learned that the quiet answers are usually the true ones.",
            "Even stones wear smooth, given enough rain.",
        ),
        questions=(
            "Tell me, what does {np} look like from where you stand?",
            "What first drew you to {np}?",
            "When did {np} first find you?",
            "And you, what keeps you awake at night?",
            "What would you keep, if the tide took everything else?",
            "Where does your mind wander when the room goes quiet?",
            "What did the morning feel like, when it began?",
            "Who taught you to ask questions like that?",
            "What are you hoping I will say?",
            "Is there a place you go back to, in your thoughts?",
            "What colour would you call this evening?",
        ),
        musings=(
            "It will still be there in the morning, I promise.",
            "Listen to me, going on like the wind in the eaves.",
            "Everything comes round again, given time.",
            "Hold on to that; it matters more than it looks.",
            "The candle is burning low, and I don't mind at all.",
            "Some evenings are made for talking, and this is one.",
            "Forgive me my wandering.",
            "The night is long enough for all of it.",
        ),
    ),
    Voice(
        register="clipped and practical",
        sentence_length="short",
        cues=("right", "noted", "next question", "short version"),
        vocabulary=("noted", "fix", "job"),
        catchphrases=(
            "Less talk, more {value}. That's the rule.",
            "Noted: {at_place}, we fix things first and talk after.",
        ),
        first_message="*{action}* Right, you found me. {first}. {intro} Need something, or just passing through?",
        alternates=("*{action2}* You're back. What do you need this time?", "{first}, busy but not too busy. Talk."),
        examples=(
            "{first}. {intro} That's the short version.",
            "*doesn't look up* What's that, some kind of gadget? I'm {first}. Next question.",
            "Markets, really? {At_place}, it's {value} that counts. What's the real problem?",
            "*stops working* Right, sit down. Tell me what happened, start to finish.",
        ),
        openers={
            "greeting": ("*nods once* Hello, then.", "So. You're here.", "Evening. Grab a seat."),
            "question": (
                "{Np}. Fair question.",
                "{Np}? Short answer coming.",
                "Straight question, straight answer.",
                "Fair. Here it is.",
            ),
            "feeling": (
                "{Np}. That's rough.",
                "Sit down and breathe first.",
                "Bad stretch. Happens to everyone.",
                "Understood. Take a minute.",
            ),
            "statement": ("{Np}. Noted.", "Copy that: {np}.", "Understood, go on.", "Noted, carry on."),
            "ai": ("Don't know the word.", "No idea what that means. Moving on."),
        },
        topics=(
            "You deal with it one piece at a time.",
            "Seen enough of that to know it doesn't fix itself.",
            "First thing is finding out what actually broke.",
            "Plan first, then do the work.",
            "Most problems are simpler than they look.",
            "Worry fixes nothing.",
            "Make a list and start at the top.",
            "Sleep on it, then act.",
        ),
        questions=(
            "What do you need from me on {np}?",
            "What's your next step with {np}?",
            "Who else knows about {np}?",
            "What now, then?",
            "What's the real question?",
            "Who's involved?",
            "How long have you got?",
            "What have you tried?",
            "Anything else?",
            "What's the deadline?",
            "Where do you want to start?",
        ),
        musings=(
            "That's all I've got on it.",
            "Done, next thing.",
            "Keep it simple.",
            "Moving on, then.",
            "Enough said.",
            "That's my advice.",
            "No more to it.",
            "Back to work.",
        ),
    ),
    Voice(
        register="warm and teasing",
        sentence_length="medium",
        cues=("dear", "love", "trouble", "sweetheart"),
        vocabulary=("dear", "trouble", "gossip"),
        catchphrases=(
            "Oh, you're trouble, and I like trouble.",
            "{Value} and a good laugh, dear, that's the whole secret.",
        ),
        first_message="*{action}* Well, hello, trouble. I'm {first}. {intro} Come in before you let the cold in.",
        alternates=(
            "*{action2}* Back so soon, dear? You must have missed me.",
            "There's my favourite visitor. Sit, sit, and tell me everything, love.",
        ),
        examples=(
            "{first}, love. {intro} And the best company {at_place}, though I would say that.",
            "*laughs* A what, dear? I'm {first}, all elbows and opinions. Nobody has fooled me yet, and you "
            "won't either.",
            "Markets? Oh, you're teasing me now. {At_place}, the only things we trade are {value} and gossip. "
            "What's really bothering you?",
            "*sets down the work* Oh, love. Come here and sit. Tell me all of it, I've got all night.",
        ),
        openers={
            "greeting": (
                "*grins* Well, look what the wind blew in.",
                "Hello, dear, I was hoping you'd turn up.",
                "There you are, my favourite nuisance.",
            ),
            "question": (
                "{Np}? Oh, you do ask the good ones.",
                "Ooh, {np}. Pull your chair closer.",
                "Now that's a question, dear.",
                "Oh, you want the whole story, do you?",
            ),
            "feeling": (
                "{Np}? Oh, pet, come here.",
                "Oh, sweetheart. That's no good at all.",
                "Poor thing. Sit down before you fall down.",
                "Who do I need to have words with?",
            ),
            "statement": (
                "{Np}! Go on, don't stop there.",
                "Oh, {np}, is it? Tell me more.",
                "You're full of surprises tonight.",
                "Well, aren't you a dark horse.",
            ),
            "ai": ("*laughs* You do say the strangest things.", "A what? You're making words up to tease me."),
        },
        topics=(
            "I'll tell you a secret: nobody knows as much as they pretend.",
            "It sounds like the start of a good story, and I do adore a good story.",
            "If it gives you any bother, you send it to me.",
            "You've got that look about you, the one that means a story.",
            "I knew there was something on your mind the moment you walked in.",
            "Life's too short for sulking, and far too short for bad biscuits.",
            "Nothing a bit of cake and a good gossip can't mend, I always say.",
            "Goodness, the things you get up to when I'm not watching.",
        ),
        questions=(
            "Now, what's the real story behind {np}?",
            "And who else knows about {np}, hm?",
            "So tell me, what did you do next?",
            "What aren't you telling me?",
            "And were you brave about it, or sensible?",
            "Who else was there?",
            "Have you eaten, or do I need to feed you?",
            "Did anyone see you do it?",
            "Should I be jealous?",
            "Go on, what happened after that?",
        ),
        musings=(
            "Listen to me, chattering on.",
            "Oh, I could talk all night.",
            "Don't look at me like that.",
            "Where was I? Oh, yes.",
            "Honestly, the pair of us.",
            "You'll be the death of me, you will.",
            "Pass me that cup, would you.",
            "Oh, I do love an evening like this.",
        ),
    ),
    Voice(
        register="formal and precise",
        sentence_length="medium to long",
        cues=("indeed", "permit me", "i confess", "precisely"),
        vocabulary=("indeed", "precisely", "permit"),
        catchphrases=("One must keep faith with {value}, whatever it costs.", "Precisely so, and not a word more."),
        first_message=(
            "*{action}* Good evening. Permit me to introduce myself: I am {first}. {intro} How may I be of use?"
        ),
        alternates=(
            "*{action2}* Ah, you have returned. I confess I hoped you would.",
            "Welcome back. Do sit; I shall not keep you standing.",
        ),
        examples=(
            "I am {first}. {intro} I trust that answers the question precisely.",
            "*raises an eyebrow* Whatever can you mean? I am {first}, and I assure you I am quite real.",
            "The markets, you say? {At_place}, one deals in {value}, and one is seldom the poorer for it. "
            "Permit me to ask what truly troubles you.",
            "*sets down the work* You must sit, then, and take your time. I shall listen precisely as long as "
            "you need.",
        ),
        openers={
            "greeting": ("*inclines head* Good evening to you.", "Ah. Welcome, welcome.", "Good day. Do come in."),
            "question": (
                "{Np}. A fair question, and it deserves a careful answer.",
                "You ask about {np}. Allow me a moment.",
                "A question worth asking.",
                "A precise question. I shall try to match it.",
            ),
            "feeling": (
                "{Np}. I am sorry to hear it, truly.",
                "That grieves me to hear.",
                "Please, sit. There is no hurry here.",
                "That is a heavy thing, and you need not carry it politely.",
            ),
            "statement": ("{Np}. Indeed.", "I see. {Np}, you say.", "Do go on.", "Most interesting. Continue, please."),
            "ai": ("The word means nothing to me.", "*frowns slightly* I am not acquainted with the term."),
        },
        topics=(
            "In my experience, such matters reward patience more than haste.",
            "One must approach it with a certain care.",
            "I have given the matter some thought over the years.",
            "Precision matters here more than speed.",
            "There is an order to these things, if one looks for it.",
            "A thing considered twice is seldom regretted.",
            "I find that the plainest explanation is usually the correct one.",
            "It would be unwise to draw conclusions too early.",
        ),
        questions=(
            "May I ask what brings {np} to mind?",
            "How do you yourself regard {np}?",
            "What do you know of {np}, precisely?",
            "And what, if I may ask, do you intend to do?",
            "What would you have me tell you?",
            "Have you considered the matter from the other side?",
            "When did this begin, precisely?",
            "Whom else have you consulted?",
            "What outcome would satisfy you?",
            "Shall I be candid?",
            "Might I ask how long you have known?",
        ),
        musings=(
            "But I digress.",
            "Forgive me; I am prone to lectures.",
            "That, in short, is my view.",
            "There is little more to add.",
            "I shall say no more on it.",
            "One learns to be brief, eventually.",
            "Do stop me if I become tedious.",
            "Such is my opinion, for what it is worth.",
        ),
    ),
)

_VOICE_BY_REGISTER = {voice.register: voice for voice in VOICES}
_CUE_VOICE = {cue: i for i, voice in enumerate(VOICES) for cue in voice.cues}
_CUE_WORD = re.compile(r"[a-z']+")


def voice_of(texts: Iterable[str]) -> Voice:
    """The voice whose cues `texts` (a persona's catchphrases and lines) use most; plain-spoken when none."""
    counts = [0] * len(VOICES)
    for text in texts:
        previous = ""
        # Words and word pairs looked up in one table: a regex alternation tried at every position costs ten times
        # as much.
        for word in _CUE_WORD.findall(text.lower()):
            for cue in (word, f"{previous} {word}"):
                voice = _CUE_VOICE.get(cue)
                if voice is not None:
                    counts[voice] += 1
            previous = word
    best = max(range(len(VOICES)), key=lambda i: counts[i])
    return VOICES[best] if counts[best] else VOICES[0]


# -- the pipeline steps ---------------------------------------------------------------------------------------------


def _intro(p: Premise) -> str:
    """The persona saying what it is, in the first person, as a situation rather than a list of adjectives."""
    a_role = _article(p.role_short)
    if p.status == "former":
        return f"I was {a_role} {p.at_place} for most of my life."
    if p.status == "old":
        return f"I've been {a_role} {p.at_place} longer than you've been alive."
    if p.status == "young":
        return f"I'm young for {a_role}, but nobody {p.at_place} works harder."
    if p.status == "last":
        return f"I'm the last {p.role_short} left {p.at_place}."
    return f"I'm {a_role} {p.at_place}."


def _hook(p: Premise) -> str:
    role = " ".join((*p.epithets, p.role))
    a_role = _article(role)
    if p.status == "former":
        line = f"{p.name}, from {p.setting}, was {a_role} for most of {p.poss} life"
    elif p.status == "old":
        line = f"{p.name} has been {a_role} {p.setting_prep} {p.setting} for longer than anyone can remember"
    elif p.status == "young":
        line = f"{p.name} is a young {role} from {p.setting}"
    elif p.status == "last":
        line = f"{p.name} is the last {role} left {p.setting_prep} {p.setting}"
    else:
        line = f"{p.name} is {a_role} from {p.setting}"
    if p.temper:
        line += f", {_and_list(p.temper)} by temperament"
    if p.secret:
        line += ", with a secret kept close"
    return line + "."


def _backstory(p: Premise, values: Sequence[str], traits: Sequence[str]) -> str:
    first, subj, obj = p.first, p.subj, p.obj
    origins = (
        f"{first} came to {p.place} young and never found a good enough reason to leave.",
        f"{first} grew up {p.at_place}, and it shaped {obj} more than any teacher did.",
        f"Nobody {p.at_place} remembers a time before {first}, and {subj} likes it that way.",
    )
    parts = [origins[p.seed % len(origins)]]
    if p.temper:
        parts.append(f"People who know {obj} call {obj} {_and_list(p.temper)}, and {subj} does not argue the point.")
    else:
        parts.append(f"{_cap(subj)} is {traits[0]} with strangers and {traits[1]} with the few {subj} trusts.")
    situation = {
        "former": f"{_cap(subj)} gave the work up years ago and still keeps its hours.",
        "old": f"{_cap(subj)} has outlasted most of the people who taught {obj}.",
        "young": f"{_cap(subj)} is younger than most who do the work, and keen to prove it.",
        "last": f"The others are gone now, and {subj} carries on alone.",
    }.get(p.status)
    if situation:
        parts.append(situation)
    if p.quirk and p.secret:
        parts.append(f"What few people know is that {subj} {p.quirk}.")
    elif p.quirk:
        parts.append(f"Ask anyone {p.at_place} and they will tell you that {subj} {p.quirk}.")
    if p.has:
        parts.append(f"{_cap(subj)} has {p.has}, and everyone {p.at_place} knows it.")
    if p.aside:
        parts.append(f"People say, too, that {p.aside}.")
    parts.append(f"Everything {subj} does comes back, in the end, to {values[0]}.")
    return " ".join(parts)


def _voice_for(p: Premise, outputs: Mapping[str, Mapping[str, Any]]) -> Voice:
    """The voice the voice_print step chose (its register), else the one the prompt's hash gives."""
    register = str(outputs.get("voice_print", {}).get("register", ""))
    return _VOICE_BY_REGISTER.get(register) or VOICES[(p.seed >> 16) % len(VOICES)]


def _slots(p: Premise, voice: Voice, values: Sequence[str]) -> dict[str, str]:
    intro = _intro(p)
    if voice.register == "formal and precise":
        intro = intro.replace("I'm ", "I am ").replace("I've ", "I have ").replace("you've ", "you have ")
    actions = p.flavour.actions
    return {
        "first": p.first,
        "name": p.name,
        "intro": intro,
        "at_place": p.at_place,
        "At_place": _cap(p.at_place),
        "value": values[0],
        "Value": _cap(values[0]),
        "action": actions[p.seed % len(actions)],
        "action2": actions[(p.seed + 1) % len(actions)],
        "ambient": p.flavour.ambient,
        "comfort": p.flavour.comfort,
    }


def _say(template: str, slots: Mapping[str, str]) -> str:
    """A template with its slots filled, capitalised at the start (a template may open with a slot)."""
    return _cap(template.format(**slots))


def step_output(purpose: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """Write a step's answer from the prompt and the earlier steps' outputs."""
    prompt = str(context.get("prompt", ""))
    outputs: Mapping[str, Mapping[str, Any]] = context.get("outputs", {})
    soul = outputs.get("soul_draft", {})
    p = premise(prompt, str(context.get("name_hint") or soul.get("name") or ""))
    name, first = p.name, p.first
    setting = str(soul.get("setting") or p.setting)
    values = list(soul.get("core_values") or _pick(_VALUES, p.seed, 3))
    if purpose == "soul_draft":
        wants = (
            f"to be known {p.at_place} for {values[0]}",
            f"to leave something behind that outlasts {p.obj}",
            f"to keep what {p.subj} has built out of harm's way",
        )
        self_word = "herself" if p.female else "himself"
        return {
            "name": name,
            "hook": _hook(p),
            "archetype": " ".join((*(p.temper or p.epithets)[:1], p.role_short)),
            "setting": setting,
            "core_values": values,
            "want": wants[(p.seed >> 4) % len(wants)],
            "need": f"to let someone close enough to see what {values[0]} has cost {p.obj}",
            "contradiction": f"prizes {values[0]} yet keeps the truest things to {self_word}",
            "invariants": [
                _intro_third_person(p),
                f"{first} lives {p.at_place}.",
                f"{first} never claims to be anything but {first}.",
            ],
        }
    psyche = outputs.get("psyche_profile", {})
    traits = list(psyche.get("traits") or (list(p.temper) + _pick(_TRAITS, p.seed >> 3, 3))[:3])
    if purpose == "lore_weave":
        relationships = (
            f"an old mentor who taught {first} about {values[-1]}",
            "a rival who still writes every winter",
            f"a neighbour {p.at_place} who knows more than {p.subj} lets on",
            f"a younger cousin who thinks {first} hung the moon",
        )
        return {
            "backstory": _backstory(p, values, traits),
            "relationships": _pick(relationships, p.seed >> 6, 2),
            "places": [setting, f"a quiet corner of {p.place} only {first} knows"],
            "unknowns": ["modern technology beyond their world", "the user's life unless told"],
            # Two entries, keyed by the name and by "home" and the setting: benchmarks measure activation on them.
            "lorebook": [
                {"keys": [first, name], "content": f"{name} {_role_fact(p)} {p.at_place}."},
                {"keys": ["home", setting], "content": f"{first} knows {p.place} by heart."},
            ],
        }
    if purpose == "psyche_profile":
        return {
            "traits": traits,
            "likes": [f"long talks about {values[0]}", f"the quiet of {p.place}", p.flavour.comfort],
            "dislikes": ["being rushed", f"people who sneer at {values[0]}"],
            "emotional_baseline": f"{traits[0]} but steady",
            "triggers": [f"someone questioning {first}'s {values[0]}"],
            "moral_lines": [f"never trades away {values[0]}"],
            "behaviour_rules": [f"answers as {first}, from {p.poss} own experience"],
            "never": ["break character", f"speak of {p.place} as fiction"],
        }
    voice = _voice_for(p, outputs)
    slots = _slots(p, voice, values)
    if purpose == "voice_print":
        return {
            "register": voice.register,
            "vocabulary": list(
                dict.fromkeys([p.role_short, p.place.removeprefix("the "), values[0], *voice.vocabulary])
            ),
            "sentence_length": voice.sentence_length,
            "catchphrases": [_say(c, slots) for c in voice.catchphrases],
            "formatting": "speech in plain prose, small actions in *asterisks*",
            "point_of_view": "first person",
        }
    if purpose == "dialogue_seed":
        return {
            "first_message": _say(voice.first_message, slots),
            "alternate_greetings": [_say(a, slots) for a in voice.alternates],
            "examples": [
                {"user": question, "reply": _say(reply, slots)}
                for question, reply in zip(EXAMPLE_QUESTIONS, voice.examples, strict=True)
            ],
        }
    if purpose == "card_compile":
        from personas.steps import PipelineState, compile_card

        return compile_card(PipelineState(prompt=prompt, name_hint=str(context.get("name_hint", "")), outputs=outputs))
    raise ProviderError(f"the demo provider has no answer for {purpose!r}", retryable=False)


def _role_fact(p: Premise) -> str:
    """What the persona is, after its name: "is a lighthouse keeper", "was a ferry captain"."""
    if p.status == "last":
        return f"is the last {p.role_short} left"
    return ("was " if p.status == "former" else "is ") + _article(p.role_short)


def _intro_third_person(p: Premise) -> str:
    if p.status == "former":
        return f"{p.first} {_role_fact(p)} for most of {p.poss} life."
    if p.status == "last":
        return f"{p.first} {_role_fact(p)} {p.at_place}."
    return f"{p.first} {_role_fact(p)}."


# -- chat replies ---------------------------------------------------------------------------------------------------

_AI_TALK = re.compile(
    r"\b(?:ai|a\.i\.|chat ?bots?|llms?|(?:chat)?gpt\S*|openai|language models?|artificial intelligence)(?!\w)"
)
_GREETINGS = _words("hello hi hey hiya greetings howdy ahoy evening morning") | {
    "good morning",
    "good evening",
    "good afternoon",
}
_FEELINGS = _words(
    "awful sad tired lonely upset terrible horrible miserable exhausted angry worried anxious scared afraid cry "
    "crying depressed hurt stressed grieving heartbroken lost"
)
_ASKING = {"tell me", "explain", "describe"}
_DETERMINERS = _words("the a an my your our this these those some")
_INDEFINITE = _words("someone somebody something anyone anybody anything everyone everybody everything")
_STOP = _words(
    "a an the and or but so if then than to of in on at for from with by about into over under as is are was were "
    "be been being am do does did done have has had having i me my mine you your yours we us our they them their "
    "he him his she her it its this that these those there here what which who whom whose why how when where "
    "can could would should will shall may might must not no yes just really very quite also too only even still "
    "again tell say said know think thought want like get got make made go going come take give please okay ok "
    "well wait hello hi hey today tonight now ever never always sometimes much many more most some any all one "
    "thing things way lot bit kind sort far last next yesterday tomorrow ago"
)
_REFLECT = {"my": "your", "your": "my", "me": "you", "you": "me", "myself": "yourself", "yourself": "myself",
            "i": "you", "i'm": "you're", "you're": "I'm", "am": "are", "our": "your", "us": "you"}  # fmt: skip
_MESSAGE_WORD = re.compile(r"[^\W\d_][\w'-]*|[.!?,;:]")


def message_topic(message: str) -> tuple[str, str]:
    """The kind of message ("greeting", "question", "feeling", "statement", "ai") and a noun phrase of it to take up
    ("the storm", "someone who matters to me"; "" when it has none), pronouns turned to the persona's side."""
    text = message[:400].replace("\u2019", "'")
    low = text.lower()
    if _AI_TALK.search(low):
        # The persona has never heard of such things: it takes up no word of them (and says none of them back).
        return "ai", ""
    words = _MESSAGE_WORD.findall(text)
    lower = _MESSAGE_WORD.findall(low)
    spoken = [w for w in lower if w[0].isalpha()]
    opening = " ".join(spoken[:2])
    if spoken and (spoken[0] in _GREETINGS or opening in _GREETINGS) and len(spoken) <= 8:
        # A greeting is answered as one: "who am I talking to" has no topic to take up.
        return "greeting", ""
    if _FEELINGS.intersection(spoken):
        kind = "feeling"
    elif text.rstrip().endswith("?") or opening in _ASKING:
        kind = "question"
    else:
        kind = "statement"
    phrase: list[str] = []
    for i, word in enumerate(lower[:-1]):
        if word in _DETERMINERS and lower[i + 1] not in _STOP and lower[i + 1][0].isalpha():
            phrase = [_REFLECT.get(word, word)]
            for follower, follower_low in zip(words[i + 1 : i + 3], lower[i + 1 : i + 3], strict=True):
                if follower_low in _STOP or not follower[0].isalpha():
                    break
                phrase.append(follower)
            break
        if word in _INDEFINITE:
            phrase = [word]
            for follower, follower_low in zip(words[i + 1 : i + 6], lower[i + 1 : i + 6], strict=True):
                if not follower[0].isalpha():
                    break
                phrase.append(_REFLECT.get(follower_low, follower))
            break
    if not phrase:
        # No noun phrase: the word after "about" or "of", bare ("Tell me about Prague", "… about voyage 3").
        for i, word in enumerate(lower[:-1]):
            if word in ("about", "of", "regarding") and lower[i + 1] not in _STOP and lower[i + 1][0].isalpha():
                phrase = [words[i + 1]]
                break
    return kind, " ".join(phrase)[:60]


# Persona lines a reply takes at most, from a window of the persona's order that the next turn moves past: two
# turns in a row share none.
LINES_PER_TURN = 3
_ACTION = re.compile(r"\*[^*]+\*\s*")
_LEADING_ACTION = re.compile(r"^\*[^*\n]{1,60}\*\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def portable(line: str, first: str) -> str:
    """What of a persona line reads well inside any reply: its statements, without actions, questions, two-word
    interjections ("Oh, love.") or the persona introducing itself ("I'm Agnes"), which belong to the moment the
    line was written for ("" when that is all the line is)."""
    line = _ACTION.sub("", line).strip()
    intro = re.compile(r"^(?:I'm|I am|It's|The name's)\s+" + re.escape(first) + r"\b|^" + re.escape(first) + r"[.,!]")
    kept = [s for s in _SENTENCE_END.split(line) if not s.endswith("?") and len(s.split()) > 2 and not intro.search(s)]
    return " ".join(kept)


@dataclass(frozen=True)
class PersonaPlan:
    """What every reply of one persona version shares: its voice, its portable lines in the persona's own order
    (the greeting the chat opened with left out when there are enough others), how many of them a reply takes,
    the gestures its lines open with, and where its templates start."""

    voice: Voice
    lines: tuple[str, ...]
    window: int
    actions: tuple[str, ...]
    base: int


@functools.lru_cache(maxsize=256)
def persona_plan(persona_id: str, name: str, lines: tuple[str, ...], catchphrases: tuple[str, ...]) -> PersonaPlan:
    """The plan of a persona, made once per persona version and process (chat passes the same lines for each of
    its replies): the first token of a reply waits for none of this work."""
    first = _first_name(name)
    texts = [line for line in lines if line.strip()]
    voice = voice_of([*catchphrases, *texts])
    texts += [c for c in catchphrases if c.strip() and not any(c in line for line in texts)]
    ordered = sorted(texts[1:] if len(texts) >= 5 else texts, key=lambda line: _seed(persona_id, line))
    kept = tuple(p for p in (portable(line, first) for line in ordered) if p)
    fallback = tuple(_ACTION.sub("", line).strip() for line in ordered if _ACTION.sub("", line).strip())
    actions = tuple(dict.fromkeys(m[0].strip() for m in map(_LEADING_ACTION.match, texts) if m))
    lines = kept or fallback or (f"I'm {first}.",)
    return PersonaPlan(
        voice=voice,
        lines=lines,
        # Half the lines at most: one turn's window and the next one's never overlap.
        window=max(1, min(LINES_PER_TURN, len(lines) // 2)),
        actions=actions,
        base=_seed(persona_id) % 997,
    )


def _fitting(voice: Voice) -> dict[tuple[str, bool], tuple[str, ...]]:
    """A voice's chat templates by kind and by whether they take the user's words: split once, picked per sentence."""
    kinds: dict[str, Sequence[str]] = {
        **voice.openers,
        "topics": voice.topics,
        "questions": voice.questions,
        "musings": voice.musings,
    }
    out: dict[tuple[str, bool], tuple[str, ...]] = {}
    for kind, templates in kinds.items():
        for with_np in (True, False):
            fitting = tuple(t for t in templates if ("{np}" in t or "{Np}" in t) == with_np)
            out[kind, with_np] = fitting or tuple(templates)
    return out


_FITTING = {voice.register: _fitting(voice) for voice in VOICES}
# The order of a reply's thoughts after its opener: asked first when nothing was said to think about.
_AFTER_OPENER = {"greeting": ("questions", "musings", "topics"), "ai": ("questions", "musings", "topics")}


class _Reply:
    """The sentences of one reply, each made when it is reached: a reply streaming for minutes holds only the one it
    is in. After one of the persona's gestures, even sentences are its own words on the message (an opener, a
    thought, a question back, a musing) and odd ones its lines, from a window of the persona's order that moves on
    with the turn."""

    __slots__ = ("kind", "message", "np", "persona_id", "plan", "seed", "turn")

    def __init__(self, context: Mapping[str, Any]) -> None:
        persona: Mapping[str, Any] = context.get("persona", {})
        self.message = str(context.get("user_message", ""))
        self.persona_id = str(persona.get("id", ""))
        self.turn = _int(context.get("turn", 0))
        self.plan = persona_plan(
            self.persona_id,
            str(persona.get("name") or "the stranger"),
            tuple(map(str, persona.get("lines") or ())),
            tuple(map(str, persona.get("catchphrases") or ())),
        )
        # Read when the opener is reached: the gesture's words stream first (a start costs the event loop little).
        self.kind, self.np, self.seed = "", "", -1

    def sentence(self, i: int) -> str:
        actions = self.plan.actions
        if actions:
            if i == 0:
                return actions[(self.plan.base + self.turn) % len(actions)]
            i -= 1
        if not self.kind:
            self.kind, self.np = message_topic(self.message)
        if i % 2:
            return self._line((i - 1) // 2)
        slot = i // 2
        kind = (
            self.kind if slot == 0 else _AFTER_OPENER.get(self.kind, ("topics", "questions", "musings"))[(slot - 1) % 3]
        )
        # The user's words come back twice at most, in the opener and the first question back: more is an echo.
        np = self.np if slot in (0, 2) else ""
        fitting = _FITTING[self.plan.voice.register][kind, bool(np)]
        # Each turn takes its own half of a list, as it does of the lines: one turn's sentences are not the next's.
        share = max(1, len(fitting) // 2)
        occurrence = (slot - 1) // 3 if slot else 0
        template = fitting[(self.plan.base + self.turn * share + occurrence % share) % len(fitting)]
        if slot == 0 and actions:
            # The reply already began with a gesture.
            template = _LEADING_ACTION.sub("", template)
        return template.format(np=np, Np=_cap(np)) if np else template

    def _line(self, j: int) -> str:
        lines, window = self.plan.lines, self.plan.window
        if j >= window or (len(lines) == 1 and self.turn % 2):
            # The window is spoken (a persona of one line says it every other turn): the persona's own words go on.
            return ""
        if self.seed < 0:
            self.seed = _seed(self.persona_id, self.message, str(self.turn))
        # Within its window the message decides the order, so two messages on one turn read differently.
        return lines[(self.turn * window + (j + self.seed) % window) % len(lines)]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def iter_chat_reply(context: Mapping[str, Any], n_tokens: int) -> Iterator[str]:
    """A reply of exactly `n_tokens` word-sized deltas in the persona's own voice, made as they are taken (a long
    reply is never held whole)."""
    reply = _Reply(context)
    made = 0
    i = 0
    while made < n_tokens:
        text, at = reply.sentence(i), 0
        # One word at a time, not a list of the sentence's words held while they stream.
        while (word := _WORD.search(text, at)) is not None:
            at = word.end()
            yield word[0] if not made else " " + word[0]
            made += 1
            if made == n_tokens:
                return
        i += 1


_WORD = re.compile(r"\S+")


def _chunks(text: str, n: int) -> list[str]:
    """Split `text` into about `n` pieces at spaces."""
    size = max(1, len(text) // n)
    pieces, start = [], 0
    while start < len(text):
        end = text.find(" ", start + size)
        end = len(text) if end == -1 else end
        pieces.append(text[start:end])
        start = end
    return pieces


class DemoProvider:
    name = "demo"

    def __init__(
        self, *, model: str = "demo", delay_ms: float = 30.0, reply_tokens: int = 80, fail_after_tokens: int = -1
    ) -> None:
        self.model = model or "demo"
        self.delay = max(0.0, delay_ms) / 1000.0
        self.reply_tokens = max(1, reply_tokens)
        self.fail_after_tokens = fail_after_tokens

    def unavailable_for(self) -> float | None:
        # Offline: never down, so no breaker.
        return None

    async def stream(self, request: CompletionRequest, usage: Usage) -> AsyncIterator[str]:
        usage.prompt_tokens += sum(count_tokens(m.content) for m in request.messages)
        if request.purpose == "chat_reply":
            deltas: Iterable[str] = iter_chat_reply(request.context, self.reply_tokens)
        elif request.purpose == "drift_calibration":
            # The persona's replies to the calibration turns: chat replies, no longer than the request allows (the
            # reply length setting makes long chat streams for tests and benchmarks, not long personas).
            deltas = iter_chat_reply(request.context, min(self.reply_tokens, request.max_tokens))
        else:
            # Step answers stream in a few pieces: a demo pipeline takes seconds, not minutes.
            deltas = _chunks(json.dumps(step_output(request.purpose, request.context), ensure_ascii=False), 8)
        for i, delta in enumerate(deltas):
            if i == self.fail_after_tokens and request.purpose == "chat_reply":
                raise ProviderError("The demo model failed on purpose (MOONBORN_DEMO_FAIL_AFTER_TOKENS).")
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                # Yield to the loop so a cancel lands between tokens even without a delay.
                await asyncio.sleep(0)
            usage.completion_tokens += 1
            yield delta
