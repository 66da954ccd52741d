"""Small list filters."""

from ansible.errors import AnsibleFilterError


def rotate(items, shift):
    """The list started at position shift (modulo its length): [a, b, c] | rotate(1) -> [b, c, a].

    Each spamcheck host starts its gateway list at a different gateway, so inbound load spreads.
    """
    items = list(items or [])
    try:
        shift = int(shift)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"rotate needs an integer shift, not {shift!r}") from exc
    if not items:
        return []
    shift %= len(items)
    return items[shift:] + items[:shift]


class FilterModule:
    def filters(self):
        return {"rotate": rotate}
