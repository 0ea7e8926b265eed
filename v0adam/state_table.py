"""`opt.state` as torch's optimizers expose it, over states that live in flat buffers.

Each param's entry holds views of its bucket's buffers, so writing into them in place (`state["exp_avg"].zero_()`)
is writing the optimizer's states. Code may also write into `opt.state` itself: `opt.state[p] = {}` to reset a
param, a new tensor for a key, a whole new `opt.state`, or ZeroRedundancyOptimizer.load_state_dict, which assigns
the loaded copies there. The table notices such edits, and the optimizer adopts them before its next step
(`V0Adam._adopt_state_edits`), reading them as torch's optimizers would.
"""

from collections import defaultdict

# The methods of dict that change its contents.
_MUTATORS = ("__setitem__", "__delitem__", "__ior__", "pop", "popitem", "clear", "update", "setdefault")


def _marks_edits(cls):
    """Wrap `cls`'s mutating dict methods so that each first marks the table edited."""
    for name in _MUTATORS:
        method = getattr(cls, name)

        def marked(self, *args, _method=method, **kwargs):
            self._mark_edited()
            return _method(self, *args, **kwargs)

        setattr(cls, name, marked)
    return cls


@_marks_edits
class ParamState(dict):
    """One param's state, as published by the optimizer; constructed like a dict (as code that copies a state's
    type does) and then not bound to any table."""

    _table = None  # a class default: unpickling fills the dict before it sets attributes

    def _mark_edited(self) -> None:
        if self._table is not None:
            self._table.edited = True


@_marks_edits
class StateTable(defaultdict):
    """`opt.state`: param -> ParamState. `edited` says whether anything was written into it, or into one of its
    ParamStates, since the optimizer last published its states."""

    def __init__(self, default_factory=dict, *args):
        super().__init__(default_factory, *args)
        self.edited = False

    def _mark_edited(self) -> None:
        self.edited = True

    def publish(self, param, values: dict) -> None:
        """Set the param's entry to `values` (the optimizer's own write: not an edit)."""
        state = ParamState(values)
        state._table = self
        dict.__setitem__(self, param, state)
