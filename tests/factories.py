"""Model factories for tests that work in-process with the database."""

import factory
from django.contrib.auth import get_user_model

from chat.models import ChatSession, Message
from chat.services import ReplyJob, TurnRequest, message_create_turns
from personas.models import Persona
from personas.services import persona_drift_stats_recount


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")


class PersonaFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Persona

    owner = factory.SubFactory(UserFactory)
    prompt = "A retired lighthouse keeper on a windy northern island"
    name = factory.Sequence(lambda n: f"Persona {n}")
    status = Persona.Status.READY
    system_prompt = factory.LazyAttribute(lambda p: f"You are {p.name}.")
    drift_threshold = 0.95


class ChatSessionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ChatSession

    persona = factory.SubFactory(PersonaFactory)
    owner = factory.LazyAttribute(lambda s: s.persona.owner)


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    session = factory.SubFactory(ChatSessionFactory)
    index = factory.Sequence(lambda n: n)
    role = Message.Role.ASSISTANT
    content = "Aye, the lamp's been lit every night for forty years."
    status = Message.Status.COMPLETED
    drift_score = 0.2
    drift_threshold = 0.95
    flagged = False

    @classmethod
    def _create(cls, model_class: type[Message], *args: object, **kwargs: object) -> Message:
        message = super()._create(model_class, *args, **kwargs)
        # Written here, not by the chat services that keep its persona's drift counters: counted as they would be.
        persona_drift_stats_recount(persona_ids=[message.session.persona_id])
        return message


def calibrated_persona(*, anchors: list[str], samples: list[str] = (), **fields: object) -> Persona:  # type: ignore[assignment]
    """A ready persona with these drift anchors and samples, calibrated for tier 0 as the pipeline calibrates it."""
    from chat.scoring import calibrate_persona, tier0

    calibrated = calibrate_persona(tier0(), anchors=anchors, samples=list(samples))
    return PersonaFactory(
        drift_anchors=list(anchors),
        drift_samples=list(samples),
        anchor_vectors=calibrated.anchor_vectors,
        embedding_model=calibrated.embedding_model,
        drift_threshold=calibrated.threshold,
        calibration=calibrated.calibration,
        **fields,
    )


def stored_turn(session: ChatSession, content: str = "Hello.") -> ReplyJob:
    """The owner's turn in `session`, stored as a request stores it; its reply is left streaming."""
    request = TurnRequest(
        owner_id=session.owner_id, session_id=session.pk, content=content, provider="demo", model="demo"
    )
    (job,) = message_create_turns(requests=[request])
    assert isinstance(job, ReplyJob), job
    return job
