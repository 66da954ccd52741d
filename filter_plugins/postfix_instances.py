"""Filters for Postfix multi-instance configuration.

The gateway runs six Postfix instances. Their main.cf settings are data: the role's
common settings, the role's per-instance settings, then the inventory's group and host
layers. Each layer is a dict keyed by instance name (or `all`) holding main.cf
parameters; a later layer wins, and a value of null removes the parameter.
"""

import re

from ansible.errors import AnsibleFilterError

PARAMETER = re.compile(r"^[a-z][a-z0-9_]*$")
ALL = "all"


def _render(instance, name, value):
    """Return a main.cf value as text: lists become comma lists, booleans yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        if "\n" in value:
            raise AnsibleFilterError(f"postfix instance '{instance}': {name} must be one line")
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(_render(instance, name, item) for item in value)
    raise AnsibleFilterError(
        f"postfix instance '{instance}': {name} must be a string, number, boolean or list, "
        f"not {type(value).__name__}"
    )


def _check_layer(layer, label, instances):
    if layer is None:
        return {}
    if not isinstance(layer, dict):
        raise AnsibleFilterError(f"{label} must be a dict of instance name (or 'all') to settings")
    for instance, settings in layer.items():
        if instance != ALL and instance not in instances:
            known = ", ".join(sorted(instances))
            raise AnsibleFilterError(f"{label}: unknown postfix instance '{instance}' (known: all, {known})")
        if not isinstance(settings, dict):
            raise AnsibleFilterError(f"{label}.{instance} must be a dict of main.cf parameters")
        for name in settings:
            if not isinstance(name, str) or not PARAMETER.match(name):
                raise AnsibleFilterError(f"{label}.{instance}: '{name}' is not a main.cf parameter name")
    return layer


def postfix_instance_settings(instances, common, *layers):
    """Merge main.cf settings for every instance.

    instances: {name: {main: {...}, ...}} from the role; common: settings for all of them;
    layers: inventory dicts {all|name: {param: value}}, lowest precedence first.
    Returns {name: {param: text}} with parameters sorted by name.
    """
    if not isinstance(instances, dict) or not instances:
        raise AnsibleFilterError("postfix instances must be a non-empty dict")
    checked = [_check_layer(layer, f"settings layer {index + 1}", instances) for index, layer in enumerate(layers)]
    result = {}
    for name, definition in instances.items():
        merged = dict(common or {})
        merged.update((definition or {}).get("main", {}))
        for layer in checked:
            merged.update(layer.get(ALL, {}))
            merged.update(layer.get(name, {}))
        result[name] = {
            key: _render(name, key, value) for key, value in sorted(merged.items()) if value is not None
        }
    return result


def postfix_master_line(service):
    """Return one master.cf service entry (with its -o options) from a dict."""
    try:
        fields = [
            str(service["service"]),
            service.get("type", "inet"),
            service.get("private", "-"),
            service.get("unpriv", "-"),
            service.get("chroot", "n"),
            str(service.get("wakeup", "-")),
            str(service.get("maxproc", "-")),
            service["command"],
        ]
    except KeyError as exc:
        raise AnsibleFilterError(f"master.cf service needs {exc.args[0]}: {service}") from exc
    lines = ["  ".join(fields)]
    for key, value in (service.get("options") or {}).items():
        if not PARAMETER.match(key):
            raise AnsibleFilterError(f"master.cf service {fields[0]}: '{key}' is not a parameter name")
        text = _render(fields[0], key, value)
        if " " in text:
            # master.cf splits on spaces; {name = value} keeps them (Postfix 3.0+).
            lines.append(f"  -o {{ {key} = {text} }}")
        else:
            lines.append(f"  -o {key}={text}")
    return "\n".join(lines)


class FilterModule:
    def filters(self):
        return {
            "postfix_instance_settings": postfix_instance_settings,
            "postfix_master_line": postfix_master_line,
        }
