"""Building instances of frozen, slotted dataclasses fast, for the paths that read every entry.

A frozen dataclass's __init__ sets each field through object.__setattr__, as does any other way
past its __setattr__, at several times the cost of a plain assignment: for an Envelope, half as
much as unpacking its bytes.

A filler is a subclass with no slots of its own and plain attribute assignment: make an empty
one (`Filler()`), assign every field, then make it an instance of the frozen class proper (same
memory layout, so Python allows it). The result is indistinguishable from one built by
the class itself: same type, equality, hash and immutability.
"""

from __future__ import annotations


def filler(cls: type) -> type:
    """A subclass of the frozen, slotted dataclass `cls` whose fields can be assigned."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__qualname__} is not a frozen dataclass with slots")
    return type(
        f"_{cls.__name__}Filler",
        (cls,),
        {
            "__slots__": (),
            # Both, or Python keeps dispatching assignments to the frozen class's methods.
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            # So that `Filler()` makes an empty instance: cheaper than object.__new__(Filler).
            "__init__": object.__init__,
        },
    )
