"""The SUPERB task registry: ``--task NAME`` picks one. A new task is one file plus one line here."""

from __future__ import annotations

from tasks.superb.protocol import SuperbTask

TASKS: dict[str, SuperbTask] = {}


def register_task(task: SuperbTask) -> SuperbTask:
    if not task.name or not task.recipe or not task.metric:
        raise ValueError(f"{type(task).__name__} needs name, recipe and metric")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> SuperbTask:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    return TASKS[name]


def _register_builtin() -> None:
    from tasks.superb.asr import SpeechRecognition
    from tasks.superb.er import EmotionRecognition
    from tasks.superb.ic import IntentClassification
    from tasks.superb.ks import KeywordSpotting
    from tasks.superb.pr import PhonemeRecognition
    from tasks.superb.sid import SpeakerIdentification

    for cls in (KeywordSpotting, SpeakerIdentification, IntentClassification, EmotionRecognition,
                PhonemeRecognition, SpeechRecognition):
        register_task(cls())


_register_builtin()
