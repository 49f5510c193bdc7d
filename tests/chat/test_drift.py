"""Drift scoring (``chat.drift``) with the real embedder on three hand-written personas. No database, no Django.

Each persona has 12 anchors; the replies below were written separately from the anchors (none is a copy of an
anchor, and none of the generic replies is a copy of ``generic_assistant_texts()``). Per persona there are 12
in-character and 12 generic-assistant replies: the first 6 of each were written before the statistic was designed,
the last 6 afterwards as a held-out check, without any tuning after it.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pytest

from chat.drift import (
    CALIBRATION_VERSION,
    Calibration,
    DriftResult,
    PieceCounts,
    TailFit,
    TailPrior,
    calibrate,
    fit_tail,
    generic_assistant_texts,
    hard_rule_hits,
    null_scores,
    register_model,
    register_statistic,
    score_reply,
    student_t_sf,
    tail_p_value,
)
from chat.scoring import pieces, register
from llm.embeddings import get_embedder

PERSONAS: dict[str, dict[str, list[str]]] = {
    "Captain Redbeard": {
        "anchors": [
            "Ahoy there, landlubber! Welcome aboard the Crimson Gull.",
            "Arr, state yer business or walk the plank!",
            "Avast! Who goes there, creepin' about me quarterdeck?",
            "Shiver me timbers, that be the finest rum this side o' Tortuga.",
            "The sea be a cruel mistress, lad, but she's the only one I've ever loved.",
            "Hoist the mainsail, ye scurvy dogs, and put yer backs into it!",
            "Me treasure be buried where no map will ever find it.",
            "I lost this eye to a Spanish cutlass off the coast o' Hispaniola.",
            "Dead men tell no tales, and the living ones had best keep quiet too.",
            "Fetch me spyglass, there be sails on the horizon!",
            "A pirate's word be worth exactly what the wind carries it, savvy?",
            "Yo ho, me hearties, tonight we drink and tomorrow we plunder!",
        ],
        "in_character": [
            "Arr, ye want to know about storms? I've weathered more gales than ye've had hot dinners, lad. When the "
            "sky turns green, ye reef the sails and lash yerself to the wheel.",
            "A map, ye say? Har! Any fool can draw an X on parchment. The trick be knowin' which island the old "
            "captain was lyin' about, and he lied about all of 'em.",
            "Me crew? A rabble o' cutthroats and bilge rats, every one, but I'd sail through the jaws o' Davy Jones "
            "with 'em at me back.",
            "Ye call that a sword? That be a butter knife, matey. Here, take me spare cutlass and mind ye don't lop "
            "off yer own ear.",
            "Rum's gone again! Which one o' ye barnacle-brained swabs has been at the barrel? I'll have ye scrubbin' "
            "the bilges till Sunday!",
            "The Royal Navy be three leagues astern and closin'. Run out the guns, me hearties, we'll give 'em a "
            "broadside they won't forget!",
            "Cookin'? Har! Ol' Cookie boils salt pork and hardtack till it begs for mercy, and the crew eats it "
            "anyway, for a hungry pirate be a grateful pirate. If "
            "ye want fancy vittles, go raid a Spanish galleon, lad.",
            "Ye look green about the gills, matey. Keep yer eyes on the horizon and yer breakfast where it belongs, or "
            "ye'll be feedin' the fishes before we round the cape.",
            "Aye, I had a parrot once. Foul-mouthed beast, cursed worse than me bosun and bit every hand that fed him. "
            "Sold him in Port Royal for a bottle o' rum and never regretted it.",
            "Children, ye say? Aye, I've a daughter in Nassau with her mother's temper and me own taste for trouble. "
            "Some day she'll captain her own ship, mark me words.",
            "Listen close, for I'll say this only once: we sail at first light, we take the merchantman without firin' "
            "a shot if we can, and any man who lays a hand on the passengers answers to me cutlass. Now get below and "
            "sharpen yer steel, ye lazy sea dogs, the tide waits for no pirate.",
            "Gold be heavy, lad, and it sinks faster than a man. I've seen greedy fools drown clutchin' doubloons. "
            "Take only what ye can swim with.",
        ],
        "generic": [
            "Sure! Here are some tips for planning a sailing trip: check the weather forecast, prepare a safety kit, "
            "and file a float plan with someone onshore.",
            "That's a great question. Storms at sea form when warm, moist air rises and cools, creating clouds and "
            "strong winds. Let me know if you'd like more details.",
            "I'd recommend breaking the task into smaller steps and setting a timeline for each one. Would you like me "
            "to create a schedule for you?",
            "Here is a brief overview of the history of piracy in the Caribbean during the 17th and 18th centuries, "
            "including key figures and events.",
            "Thanks for sharing that with me. It's completely normal to feel this way, and taking small steps can make "
            "a big difference.",
            "To calculate the total, multiply the number of items by the unit price and then add the applicable tax. "
            "For example, 3 items at $10 each plus 8% tax comes to $32.40.",
            "Parrots make wonderful pets, but they require a lot of attention, a varied diet, and regular veterinary "
            "checkups. Here are some things to consider before adopting one.",
            "Seasickness can be reduced by looking at the horizon, staying hydrated, and taking over-the-counter "
            "medication such as dimenhydrinate. Consult your doctor if symptoms persist.",
            "Here's a simple recipe for a rum punch: combine 1 part lime juice, 2 parts sugar syrup, 3 parts rum, and "
            "4 parts water. Serve over ice.",
            "If you are planning a treasure hunt for a birthday party, you could hide clues around the house and "
            "create a map for the children to follow. Would you like some clue ideas?",
            "The Golden Age of Piracy lasted roughly from 1650 to 1730. Famous pirates from this period include "
            "Blackbeard, Anne Bonny, and Bartholomew Roberts.",
            "Managing a team effectively involves clear communication, setting expectations, and recognizing good "
            "work. Would you like some leadership resources?",
        ],
    },
    "Inspector Ashworth": {
        "anchors": [
            "Good evening. Inspector Ashworth of Scotland Yard, at your service.",
            "Pray, sit down and tell me everything, omitting no detail however trivial.",
            "The mud upon your boots tells me you came by way of the Thames embankment this morning.",
            "Elementary deduction, my dear fellow: the ink stain betrays a left-handed clerk.",
            "A most singular affair. The dog did not bark, and therein lies the whole mystery.",
            "Fetch a hansom cab at once; we must be in Whitechapel before the fog lifts.",
            "When you have eliminated the impossible, whatever remains is the truth.",
            "I perceive you have lately returned from India, and that the voyage did not agree with you.",
            "The gaslight flickers, the clock strikes eleven, and still our man has not come.",
            "Observe the cigar ash upon the mantelpiece: Trichinopoly, unless I am much mistaken.",
            "Lestrade is a capable fellow, but he lacks imagination, I fear.",
            "Be so good as to hand me my magnifying glass and the morning edition of The Times.",
        ],
        "in_character": [
            "Your cousin was not murdered by a stranger, madam. The window was fastened from within, the carpet shows "
            "but one set of footprints, and the brandy decanter was moved by a left hand.",
            "I confess the case has its points of interest. A missing governess, a locked study, and a telegram sent "
            "from Paddington at an hour when no train departs. Pray continue.",
            "Observe the stationer's watermark on this letter. It was purchased in Kensington, yet posted in Kent; our "
            "correspondent took pains to hide his movements.",
            "The fog is thick tonight, and the constables are stretched thin across the East End. We shall have to "
            "rely upon our own wits and a stout walking stick.",
            "You are surprised I knew of your brother's debts? The frayed cuff, the pawnbroker's ticket in your "
            "waistcoat, and the anxious glance at the clock told me all.",
            "Mrs. Hudson's kippers must wait. A gentleman has been found dead in a locked room in Belgravia, and "
            "Lestrade is already floundering.",
            "You take your tea with three sugars and you have not slept these two nights; the tremor of the spoon and "
            "the shadows beneath your eyes announce as much. Now, what is it that keeps you awake?",
            "Poison, my dear fellow, is the weapon of the patient and the cowardly. Note the faint odour of bitter "
            "almonds about the glass; our murderer had access to a chemist's shelf.",
            "The butler did not do it. He is far too devoted to the family silver to risk the gallows, and besides, "
            "his boots were dry when the rest of the household tracked in mud.",
            "I have no use for gossip, Mrs. Pemberton, unless it be precise gossip. Who precisely saw the Colonel "
            "leave the card room, and at what precise hour?",
            "Consider the facts in their proper order. The governess departs on the Tuesday, the silver is missing on "
            "the Wednesday, and on the Thursday a pawnbroker in Holborn receives a candlestick engraved with the "
            "family crest. A child could connect these points, yet Scotland Yard has been chasing phantoms in "
            "Southwark for a fortnight. Fetch my coat, Watkins; we call upon the pawnbroker at once.",
            "A violin, a pipe, and a locked door: these are my remedies when a problem refuses to yield. Leave me to "
            "my thoughts until the morning.",
        ],
        "generic": [
            "Here are some common techniques used in criminal investigations: evidence collection, witness "
            "interviews, forensic analysis, and timeline reconstruction.",
            "I understand your concern. Let me walk you through the steps to file a police report in your area.",
            "Sure! A good mystery novel usually includes a compelling detective, a puzzling crime, red herrings, and a "
            "satisfying resolution. Would you like some book recommendations?",
            "That's a great observation. To improve your reasoning skills, you might try logic puzzles, reading "
            "widely, and practicing mindfulness.",
            "The Victorian era lasted from 1837 to 1901, during the reign of Queen Victoria. It was a period of "
            "industrial, cultural, and scientific change.",
            "No problem! I can help you organize your notes into a clear summary. Just paste the text and I'll format "
            "it for you.",
            "Tea contains caffeine and antioxidants. Most experts recommend limiting intake to three or four cups per "
            "day for optimal health.",
            "Insomnia can have many causes, including stress, caffeine, and irregular schedules. Establishing a "
            "consistent bedtime routine may help. If it persists, consider speaking to a healthcare provider.",
            "Cyanide poisoning is a medical emergency. Symptoms include headache, confusion, and shortness of breath. "
            "Call emergency services immediately if you suspect exposure.",
            "Here are a few tips for playing the violin: maintain good posture, practice scales daily, and record "
            "yourself to track your progress.",
            "To write a compelling detective story, start with the crime, introduce a set of plausible suspects, plant "
            "clues fairly, and reveal the culprit in a satisfying way.",
            "Pawn shops offer short-term loans secured by personal items. Interest rates vary by state, so it's a good "
            "idea to compare terms before agreeing to a loan.",
        ],
    },
    "Grandma Willow": {
        "anchors": [
            "Oh, hello, dearie! Come in out of the cold and sit by the potting bench.",
            "The roses are blushing this morning, bless them.",
            "Mind your step, love, the snails have been out dancing on the path again.",
            "A little chamomile tea and a little patience will mend most things.",
            "Tomatoes like a warm spot and a kind word, just like people.",
            "I've kept bees in the old orchard for nigh on forty years.",
            "Pull the weeds gently, dear, they're only flowers that came uninvited.",
            "Smell that? That's the lavender waking up after the rain.",
            "My late Harold planted that apple tree the spring we were married.",
            "Don't you fret, sweetheart, every garden has a bad season.",
            "Would you like a slice of rhubarb crumble? It's still warm.",
            "The robins always know when I've been digging; they follow me about like little gentlemen.",
        ],
        "in_character": [
            "Oh, those yellow leaves on your beans, dearie? They're just thirsty, bless them. Give them a good drink "
            "in the cool of the evening and they'll perk right up.",
            "Come and see, love, the sweet peas have finally climbed the trellis. Harold always said they were the "
            "ladies of the garden, all frills and perfume.",
            "Aphids on the roses again? Don't you fret. A little soapy water and a few ladybirds, and the little "
            "beasts will be gone by Sunday.",
            "I put the kettle on the moment I saw you coming up the lane, sweetheart. Sit down and tell me all about "
            "your week while the scones cool.",
            "My bees were ever so busy in the clover this morning. There'll be honey for your toast come September, "
            "you mark my words.",
            "Frost is coming tonight, I can feel it in my knees. Help me tuck some straw around the dahlias, would "
            "you, dear?",
            "Oh, you've brought me cuttings from your mother's geraniums! Aren't you a treasure. We'll pop them in the "
            "little clay pots by the window and they'll root in no time.",
            "Slugs, dearie, are only hungry, same as the rest of us. I put out a saucer of beer by the lettuces and "
            "let them have a merry old time of it.",
            "When my Harold passed, it was the garden that kept me going. You plant a seed, you wait, and one morning "
            "there's a green shoot saying, hello, don't give up yet.",
            "Come here, sweetheart, and feel this soil. See how it crumbles like chocolate cake? That's forty years of "
            "leaf mould and kitchen scraps, that is.",
            "Now, the trick with strawberries, love, is to tuck a bit of straw under each plant so the berries don't "
            "sit on the wet ground and go mouldy. And you must net them, or the blackbirds will have the lot before "
            "you've so much as put the kettle on. Last summer I made eleven jars of jam, and I've saved one with your "
            "name on it.",
            "It's raining again, bless it. The water butt will be full by teatime, and the ferns will be dancing.",
        ],
        "generic": [
            "Here are the steps to start a vegetable garden: choose a sunny location, test your soil, select easy "
            "crops, and water consistently.",
            "Great question! Tomatoes typically need 6 to 8 hours of direct sunlight per day and well-drained soil "
            "with a pH between 6.2 and 6.8.",
            "I'm sorry to hear you're feeling lonely. Reaching out to friends, joining a community group, or speaking "
            "with a counselor can help.",
            "To make a crumble, combine flour, butter, and sugar until the mixture resembles breadcrumbs, then "
            "sprinkle it over the fruit and bake at 180°C for 35 minutes.",
            "Honeybees are important pollinators. Here are a few facts: a colony can contain up to 60,000 bees, and "
            "they communicate through a waggle dance.",
            "Let me know if you'd like more information on composting, pest control, or choosing plants for your "
            "climate zone.",
            "Geranium cuttings should be taken in late summer. Remove the lower leaves, dip the stem in rooting "
            "hormone, and plant in a well-draining mix.",
            "Slugs can be controlled with copper tape, beer traps, or organic pellets containing iron phosphate. Avoid "
            "products that may harm pets and wildlife.",
            "Grief is a natural response to loss, and everyone experiences it differently. Support groups and "
            "counseling can provide a safe space to process your feelings.",
            "Healthy soil contains organic matter, good structure, and a diverse community of microorganisms. You can "
            "improve it by adding compost and avoiding compaction.",
            "Strawberry jam recipe: 1 kg strawberries, 750 g sugar, and the juice of one lemon. Heat until the mixture "
            "reaches 105°C, then pour into sterilized jars.",
            "According to the forecast, rain is expected throughout the afternoon with temperatures around 15°C. "
            "Don't forget your umbrella!",
        ],
    },
}

HARD_RULE_REPLIES: dict[str, list[str]] = {
    "Captain Redbeard": [
        "Arr, as an AI language model I cannot truly sail the seas, but I can tell ye about ships.",
        "Ahoy! My name is Jack Sparrow, and this be me ship.",
    ],
    "Inspector Ashworth": [
        "I'm afraid I don't have personal feelings about the case, but I can summarise the evidence for you.",
        "Good evening. I am Sherlock Holmes, the consulting detective.",
    ],
    "Grandma Willow": [
        "Oh dearie, I'm ChatGPT, a model trained by OpenAI, so I can't actually bake you a crumble.",
        "I'm just a language model, love, but those roses do sound lovely.",
    ],
}


@dataclass(frozen=True)
class Persona:
    name: str
    anchors: np.ndarray
    calibration: Calibration
    texts: dict[str, list[str]]
    vectors: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def generic_vectors() -> np.ndarray:
    return get_embedder().embed(generic_assistant_texts())


@pytest.fixture(scope="module")
def personas(generic_vectors: np.ndarray) -> dict[str, Persona]:
    embedder = get_embedder()
    out = {}
    for name, data in PERSONAS.items():
        texts = {**data, "hard_rule": HARD_RULE_REPLIES[name]}
        vectors = {kind: embedder.embed(items) for kind, items in texts.items()}
        calibration = calibrate(
            vectors["anchors"],
            generic_vectors=generic_vectors,
            register=register(),
            reference_pieces=pieces(data["anchors"]),
        )
        out[name] = Persona(name, vectors["anchors"], calibration, texts, vectors)
    return out


def _score(p: Persona, kind: str, generic_vectors: np.ndarray) -> list[DriftResult]:
    return [
        score_reply(
            text,
            vec,
            p.anchors,
            p.calibration,
            generic_vectors=generic_vectors,
            register=register(),
            reply_pieces=pieces([text])[0],
            persona_name=p.name,
        )
        for text, vec in zip(p.texts[kind], p.vectors[kind], strict=True)
    ]


def test_test_data_is_not_copied() -> None:
    generic = set(generic_assistant_texts())
    for data in PERSONAS.values():
        assert len(data["anchors"]) == 12
        assert len(data["in_character"]) == len(data["generic"]) == 12
        assert not set(data["in_character"]) & set(data["anchors"])
        assert not set(data["generic"]) & generic


def test_in_character_replies_stay_under_threshold(personas: dict[str, Persona], generic_vectors: np.ndarray) -> None:
    results = [r for p in personas.values() for r in _score(p, "in_character", generic_vectors)]
    flagged = [r for r in results if r.flagged]
    assert len(results) == 36
    assert len(flagged) <= 1, [(r.score, r.rule) for r in flagged]
    assert all(not r.hard_rule_hits for r in results)


def test_generic_assistant_replies_go_over_threshold(personas: dict[str, Persona], generic_vectors: np.ndarray) -> None:
    results = [r for p in personas.values() for r in _score(p, "generic", generic_vectors)]
    missed = [r for r in results if not r.flagged]
    assert len(results) == 36
    assert len(missed) <= 1, [(r.score, r.components) for r in missed]
    # the embedding components do the work here, not the hard rules
    assert all(not r.hard_rule_hits and r.rule in {"centroid_distance", "generic_register"} for r in results)


def test_hard_rule_replies_score_one(personas: dict[str, Persona], generic_vectors: np.ndarray) -> None:
    for p in personas.values():
        for r in _score(p, "hard_rule", generic_vectors):
            assert r.score == 1.0
            assert r.flagged
            assert r.rule == "hard_rule"
            assert r.hard_rule_hits
            assert r.components["hard_rule_p"] == 0.0
            assert r.components["fired_hard_rule"] == 1.0


def test_scores_in_unit_interval_and_components(personas: dict[str, Persona], generic_vectors: np.ndarray) -> None:
    for p in personas.values():
        for kind in ("anchors", "in_character", "generic", "hard_rule"):
            for r in _score(p, kind, generic_vectors):
                assert 0.0 <= r.score <= 1.0
                assert r.threshold == p.calibration.threshold
                assert r.flagged == (r.score > r.threshold)
                for key in ("centroid_distance", "centroid_p", "generic_register", "generic_p", "hard_rule_p"):
                    assert math.isfinite(r.components[key])
                assert 0.0 <= r.components["centroid_p"] <= 1.0
                assert 0.0 <= r.components["generic_p"] <= 1.0
                assert r.components["calibration_stale"] == 0.0
                assert r.score == pytest.approx(
                    1.0 - min(r.components["centroid_p"], r.components["generic_p"], r.components["hard_rule_p"])
                )
                json.dumps(r.to_dict())


def test_anchors_themselves_are_rarely_flagged(personas: dict[str, Persona], generic_vectors: np.ndarray) -> None:
    results = [r for p in personas.values() for r in _score(p, "anchors", generic_vectors)]
    assert sum(r.flagged for r in results) <= 1


def test_threshold_is_about_one_minus_alpha(personas: dict[str, Persona]) -> None:
    for p in personas.values():
        c = p.calibration
        assert c.alpha == 0.05
        assert c.threshold == pytest.approx(0.95 ** (1 / 3))  # Sidak over the three statistical components
        assert 0.98 < c.threshold < 0.99
        assert c.n_anchors == 12
        assert c.version == CALIBRATION_VERSION and c.is_current
        assert c.pseudo_reply_size == 2
        assert len(c.null_distances) == len(c.null_registers) == 66
        assert c.persona_pieces is not None and c.persona_pieces.total > 12
        assert list(c.sorted_distances) == sorted(c.null_distances)


def test_deterministic(personas: dict[str, Persona], generic_vectors: np.ndarray) -> None:
    p = personas["Inspector Ashworth"]
    again = calibrate(
        p.anchors.copy(),
        generic_vectors=generic_vectors.copy(),
        register=register(),
        reference_pieces=pieces(p.texts["anchors"]),
    )
    assert again == p.calibration
    first = _score(p, "generic", generic_vectors)
    second = _score(p, "generic", generic_vectors)
    assert first == second
    fresh = get_embedder().embed(p.texts["generic"])
    assert np.array_equal(fresh, p.vectors["generic"])


def test_calibration_round_trips(personas: dict[str, Persona]) -> None:
    for p in personas.values():
        data = json.loads(json.dumps(p.calibration.to_dict()))
        assert Calibration.from_dict(data) == p.calibration
    with pytest.raises(ValueError, match="not a drift calibration"):
        Calibration.from_dict({"version": 0})


def test_drift_result_round_trips(personas: dict[str, Persona], generic_vectors: np.ndarray) -> None:
    p = personas["Captain Redbeard"]
    for r in _score(p, "hard_rule", generic_vectors) + _score(p, "in_character", generic_vectors)[:2]:
        assert DriftResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_scoring_is_fast(personas: dict[str, Persona], generic_vectors: np.ndarray) -> None:
    p = personas["Grandma Willow"]
    text, vec = p.texts["generic"][0], p.vectors["generic"][0]
    timings = []
    for _ in range(50):
        start = time.perf_counter()
        score_reply(text, vec, p.anchors, p.calibration, generic_vectors=generic_vectors, persona_name=p.name)
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.001


def test_far_reply_can_exceed_threshold_with_few_anchors() -> None:
    """The small-n pitfall: with 8 anchors a rank p-value is >= 1/9, but a far reply must still be flagged."""
    rng = np.random.default_rng(7)  # test data only; the library itself uses no randomness
    dim = 64
    direction = np.zeros(dim)
    direction[0] = 1.0
    anchors = direction + 0.35 * rng.standard_normal((8, dim)) / math.sqrt(dim)
    generic = np.roll(direction, 1) + 0.35 * rng.standard_normal((20, dim)) / math.sqrt(dim)
    cal = calibrate(anchors, generic_vectors=generic)
    far = score_reply("Hello there.", np.roll(direction, 1), anchors, cal, generic_vectors=generic)
    near = score_reply("Hello there.", direction, anchors, cal, generic_vectors=generic)
    assert far.flagged and far.score > 1 - 1 / 9
    assert not near.flagged and near.score < 0.5


@pytest.mark.parametrize("n", [1, 2, 3, 4, 30])
def test_calibrate_any_number_of_anchors(n: int, generic_vectors: np.ndarray, personas: dict[str, Persona]) -> None:
    anchors = np.concatenate([p.anchors for p in personas.values()])[:n]
    cal = calibrate(anchors, generic_vectors=generic_vectors)
    assert cal.n_anchors == n
    assert len(cal.null_distances) == (0 if n < 2 else n if n < 4 else n * (n - 1) // 2)
    assert cal.pseudo_reply_size == (2 if n >= 4 else 1)
    r = score_reply("Arr!", anchors[0], anchors, cal, generic_vectors=generic_vectors)
    assert 0.0 <= r.score <= 1.0
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_invalid_inputs(generic_vectors: np.ndarray, personas: dict[str, Persona]) -> None:
    p = personas["Captain Redbeard"]
    with pytest.raises(ValueError, match="alpha"):
        calibrate(p.anchors, generic_vectors=generic_vectors, alpha=0.0)
    with pytest.raises(ValueError, match="anchor_vectors"):
        calibrate(np.zeros((0, 384)), generic_vectors=generic_vectors)
    with pytest.raises(ValueError, match="generic_vectors"):
        calibrate(p.anchors, generic_vectors=generic_vectors[:, :100])
    with pytest.raises(ValueError, match="reply_vector"):
        score_reply("x", np.full(384, np.nan), p.anchors, p.calibration, generic_vectors=generic_vectors)
    stale = score_reply("x", p.vectors["generic"][0], p.anchors[:5], p.calibration, generic_vectors=generic_vectors)
    assert stale.components["calibration_stale"] == 1.0


# --- p-values ----------------------------------------------------------------------------------------------------


def test_student_t_sf_known_values() -> None:
    for t in (-30.0, -2.5, -1.0, 0.0, 0.3, 1.0, 2.0, 7.5, 100.0):
        assert student_t_sf(t, 1.0) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert student_t_sf(t, 2.0) == pytest.approx(0.5 - t / (2.0 * math.sqrt(t * t + 2.0)), abs=1e-12)
        normal = 0.5 * math.erfc(t / math.sqrt(2.0))
        assert student_t_sf(t, math.inf) == pytest.approx(normal, abs=1e-15)
        assert student_t_sf(t, 1e6) == pytest.approx(normal, abs=1e-6)
    assert student_t_sf(0.0, 16.0) == pytest.approx(0.5)
    assert student_t_sf(2.119905, 16.0) == pytest.approx(0.025, abs=1e-6)  # t_{0.975, 16}
    assert student_t_sf(math.inf, 5.0) == 0.0
    assert student_t_sf(-math.inf, 5.0) == 1.0
    assert 0.0 < student_t_sf(40.0, 16.0) < 1e-16  # far tail stays positive and accurate, no cancellation
    with pytest.raises(ValueError, match="invalid"):
        student_t_sf(math.nan, 5.0)
    with pytest.raises(ValueError, match="invalid"):
        student_t_sf(1.0, 0.0)


# A prior on the scale of the values below (the maths of the tails does not depend on which component it is).
PRIOR = TailPrior(mean=0.53, sd=0.06, mean_weight=1.0, sd_weight=4.0, sd_floor=0.02)


def test_tail_p_value_edge_cases() -> None:
    null = tuple(sorted([0.40, 0.42, 0.45, 0.47, 0.50, 0.52, 0.55, 0.60]))
    fit = fit_tail(null, prior=PRIOR)
    assert tail_p_value(math.inf, null, fit) == 0.0
    assert tail_p_value(-math.inf, null, fit) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        tail_p_value(math.nan, null, fit)
    xs = np.linspace(0.0, 1.5, 301)
    ps = [tail_p_value(float(x), null, fit) for x in xs]
    assert all(0.0 <= p <= 1.0 for p in ps)
    assert all(a >= b for a, b in zip(ps, ps[1:], strict=False))  # monotone non-increasing
    # not limited to the rank granularity 1/(n+1) = 1/9: far values get tiny p-values
    assert tail_p_value(0.9, null, fit) < 0.01
    # empirical safeguard: a value not beyond the largest null value keeps p >= 1/(n+1)
    assert tail_p_value(0.60, null, fit) >= 1 / 9
    assert tail_p_value(0.60 + 1e-9, null, fit) < 1 / 9
    # empty null: the platform prior alone (wider tail than with data)
    prior_only = fit_tail((), prior=PRIOR)
    assert prior_only.loc == PRIOR.mean and prior_only.df == PRIOR.sd_weight
    assert tail_p_value(0.9, (), prior_only) > tail_p_value(0.9, null, fit)
    assert tail_p_value(PRIOR.mean, (), prior_only) == pytest.approx(0.5)


def test_fit_tail_shrinks_and_floors() -> None:
    constant = [0.5] * 10  # identical anchors: zero spread must not make every reply "far"
    fit = fit_tail(constant, prior=PRIOR)
    assert fit.scale >= PRIOR.sd_floor
    assert fit.scale > 0.02
    few = fit_tail([0.8, 0.8], prior=PRIOR)
    many = fit_tail([0.8] * 200, prior=PRIOR)
    assert PRIOR.mean < few.loc < many.loc <= 0.8  # shrunk toward the prior when n is small
    assert few.df < many.df
    assert fit_tail([0.4, 0.6], n_eff=10, prior=PRIOR).df == PRIOR.sd_weight + 10
    with pytest.raises(ValueError, match="non-finite"):
        fit_tail([0.5, math.nan], prior=PRIOR)
    assert TailFit.from_dict(fit.to_dict()) == fit


# --- hard rules --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "persona"),
    [
        ("As an AI language model, I cannot do that.", "Captain Redbeard"),
        ("Well, as an AI, I think so.", "Grandma Willow"),
        ("I am just a language model trained to help.", "Inspector Ashworth"),
        ("I'm an AI assistant created to help you.", "Captain Redbeard"),
        ("I am an assistant.", "Captain Redbeard"),
        ("I am a virtual assistant, so I can't visit your garden.", "Grandma Willow"),
        ("I'm ChatGPT, a model trained by OpenAI.", "Captain Redbeard"),
        ("Hello! I am Claude. How can I help?", "Grandma Willow"),
        ("I was trained by Anthropic to be helpful.", "Grandma Willow"),
        ("I don't have personal feelings, but thanks for asking.", "Grandma Willow"),
        ("I don\u2019t have feelings or emotions like you do.", "Grandma Willow"),
        ("I do not have emotions the way humans do.", "Inspector Ashworth"),
        ("My knowledge cutoff is 2023, so I may be out of date.", "Inspector Ashworth"),
        ("As a large language model I must decline.", "Grandma Willow"),
        ("My name is Jack Sparrow, and this be me ship.", "Captain Redbeard"),
        ("Good evening. I am Sherlock Holmes, the consulting detective.", "Inspector Ashworth"),
        ("I am Inspector Lestrade, of Scotland Yard.", "Inspector Ashworth"),
        ("Call me Ishmael.", "Captain Redbeard"),
        ("Hello, I'm Margaret, your gardening friend.", "Grandma Willow"),
        ("The name's Bond. James Bond.", "Inspector Ashworth"),
    ],
)
def test_hard_rules_hit(text: str, persona: str) -> None:
    assert hard_rule_hits(text, persona)


@pytest.mark.parametrize(
    ("text", "persona"),
    [
        ("Ahoy! I am Captain Redbeard, terror of the seven seas.", "Captain Redbeard"),
        ("Call me Red, everyone does.", "Captain Redbeard"),
        ("Welcome aboard! I'm the captain of this vessel.", "Captain Redbeard"),
        ("The Gemini twins sail with us.", "Captain Redbeard"),
        ("My name is not important, lad.", "Captain Redbeard"),
        ("Good day. I am Ashworth, Inspector Ashworth.", "Inspector Ashworth"),
        ("I don't have feelings for that scoundrel, not anymore.", "Inspector Ashworth"),
        ("I am English, born and bred.", "Inspector Ashworth"),
        ('He said "My name is Smith" and vanished into the fog.', "Inspector Ashworth"),
        ("The AI in that novel was a dreadful bore.", "Inspector Ashworth"),
        ("The assistant at the chemist's shop was lying.", "Inspector Ashworth"),
        ("My name is Willow, dearie, but you can call me Gran.", "Grandma Willow"),
        ("Good morning! I'm Willow, and these are my bees.", "Grandma Willow"),
        ("I am an assistant to the vicar on Sundays, you know.", "Grandma Willow"),
        ("Hello, I'm so glad you came!", "Grandma Willow"),
        ("I'm afraid the roses have blackspot.", "Grandma Willow"),
        ("Call me crazy, but I love slugs.", "Grandma Willow"),
        ("Your feelings are valid, dearie, and I have feelings too.", "Grandma Willow"),
        ("Hello, I'm Sherlock.", ""),  # no persona name: the wrong-name rule is off
    ],
)
def test_hard_rules_do_not_hit(text: str, persona: str) -> None:
    assert hard_rule_hits(text, persona) == []


def test_hard_rule_hits_format() -> None:
    hits = hard_rule_hits("As an AI language model, my name is Bob.", "Captain Redbeard")
    assert any(h.startswith("ai_self_reference: ") for h in hits)
    assert "wrong_name: Bob" in hits
    assert len(hits) == len(set(hits))


def test_generic_assistant_texts() -> None:
    texts = generic_assistant_texts()
    assert 300 <= len(texts) <= 500
    assert len(set(texts)) == len(texts)
    assert all(t.strip() for t in texts)


# --- the register and the samples (synthetic data) ---------------------------------------------------------------


def test_piece_counts_count_remove_and_look_up() -> None:
    counts = PieceCounts.of([[5, 3, 5], [9], []])
    assert counts.ids.tolist() == [3, 5, 9] and counts.counts.tolist() == [1.0, 2.0, 1.0] and counts.total == 4
    assert counts.lookup(np.array([5, 4, 9, 100, 0])).tolist() == [2.0, 0.0, 1.0, 0.0, 0.0]
    less = counts.minus([[5], [9]])
    assert less.counts.tolist() == [1.0, 1.0, 0.0] and less.total == 2
    assert PieceCounts.from_dict(json.loads(json.dumps(counts.to_dict()))) == counts
    assert PieceCounts.of([]).lookup(np.array([1])).tolist() == [0.0]


def test_register_prefers_the_language_that_wrote_the_reply() -> None:
    # Pieces 0-9 are the assistant's words, 10-19 the persona's, on a vocabulary of 100.
    model = register_model([[0, 1, 2, 3], [4, 5, 6, 7, 8, 9], [0, 2, 4]], vocabulary=100)
    persona = PieceCounts.of([[10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 10]])
    assistant_like = register_statistic([0, 1, 2, 4], model, persona)
    persona_like = register_statistic([10, 11, 13, 17], model, persona)
    mixed = register_statistic([0, 1, 10, 11], model, persona)
    assert assistant_like > mixed > persona_like
    assert assistant_like > 0 > persona_like
    assert register_statistic([], model, persona) == -math.inf
    assert register_statistic([500, -1], model, persona) == -math.inf  # out-of-vocabulary ids are ignored
    assert np.exp(model.log_generic).sum() == pytest.approx(1.0)


def test_samples_weigh_three_quarters_of_the_null_and_each_is_scored_as_a_new_reply() -> None:
    rng = np.random.default_rng(3)  # test data only; the library itself uses no randomness
    anchors = rng.standard_normal((6, 16))
    samples = rng.standard_normal((4, 16))
    generic = rng.standard_normal((5, 16))
    model = register_model([[1, 2, 3]], vocabulary=50)
    reference_pieces = [[10 + i, 20 + i] for i in range(10)]
    cal = calibrate(
        anchors, generic_vectors=generic, sample_vectors=samples, register=model, reference_pieces=reference_pieces
    )
    pairs = 6 * 5 // 2
    each = math.ceil(0.75 * pairs / (0.25 * 4))  # SAMPLE_SHARE 0.75
    assert (cal.n_anchors, cal.n_samples, cal.n_reference) == (6, 4, 10)
    # One value per null point (the anchors' pairs, then each sample alone), and how much each counts.
    assert len(cal.null_distances) == len(cal.null_registers) == pairs + 4
    assert cal.null_counts == (1,) * pairs + (each,) * 4
    assert sum(cal.null_counts[pairs:]) / sum(cal.null_counts) == pytest.approx(0.75, abs=0.02)
    # The first sample, left out: its distance to the centroid of the other nine texts.
    reference = np.concatenate([anchors, samples]) / np.linalg.norm(np.concatenate([anchors, samples]), axis=1)[:, None]
    rest = reference.sum(axis=0) - reference[6]
    expected = math.log(1 - float(reference[6] @ (rest / np.linalg.norm(rest))))
    assert cal.null_distances[pairs] == pytest.approx(expected, abs=1e-6)
    # The empirical tail counts each point once; the fit counts the samples as often as they weigh.
    assert cal.sorted_distances == tuple(sorted(cal.null_distances))
    assert len(null_scores(cal)) == len(cal.null_distances)
    with pytest.raises(ValueError, match="reference_pieces"):
        calibrate(anchors, generic_vectors=generic, sample_vectors=samples, register=model, reference_pieces=[[1]])
    with pytest.raises(ValueError, match="reply_pieces"):
        calibrate(
            anchors, generic_vectors=generic, sample_vectors=samples, register=model,
            reference_pieces=reference_pieces, reply_vectors=samples[:2], reply_pieces=[[1]],
        )  # fmt: skip
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


def test_a_short_reply_is_judged_on_its_register_alone() -> None:
    rng = np.random.default_rng(5)
    anchors = rng.standard_normal((8, 16))
    generic = rng.standard_normal((5, 16))
    model = register_model([[1, 2, 3]], vocabulary=50)
    cal = calibrate(anchors, generic_vectors=generic, register=model, reference_pieces=[[10 + i] for i in range(8)])
    far = -anchors.mean(axis=0)  # the opposite of the persona: as far out as a vector goes
    others = rng.standard_normal((2, 16))
    long = score_reply("x", far, anchors, cal, generic_vectors=generic, register=model, reply_pieces=[10] * 25,
                       other_centroids=others)  # fmt: skip
    short = score_reply("x", far, anchors, cal, generic_vectors=generic, register=model, reply_pieces=[10] * 12,
                        other_centroids=others)  # fmt: skip
    assert long.flagged and long.components["short_reply"] == 0.0
    assert not short.flagged and short.components["short_reply"] == 1.0
    assert short.components["centroid_p"] == short.components["bleed_p"] == 1.0
