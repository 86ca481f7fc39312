"""Teachers: any model that answers prompts (teacher, judge, or a system under evaluation).

`make_teacher(TeacherConfig)` returns a `Teacher`; see `base.py` for the interface.
"""

from alpacakit.teachers.base import Completion, Teacher, Usage

__all__ = ["Completion", "Teacher", "Usage", "make_teacher"]


def make_teacher(config, tracker=None, **kwargs):  # noqa: ANN001 - lazy import keeps `alpacakit --help` fast
    from alpacakit.teachers.resolve import make_teacher as _make

    return _make(config, tracker, **kwargs)
