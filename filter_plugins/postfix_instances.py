"""Filters for Postfix multi-instance configuration (role postfix_multi).

Instances are data. Their main.cf settings merge in layers: the caller's shared settings,
the instance's own settings, then the inventory's group and host layers, then the
identity postmulti fixes (name, group, queue and data directory). Each inventory layer
is a dict keyed by instance name (or `all`) holding main.cf parameters; a later layer
wins, and a value of null removes the parameter.

master.cf is a list of services: the instance's listeners and own services, then the
standard table with the entries the caller or the instance replaces (same service name
and type) swapped in place. Lookup tables are data too: key = value settings (an LDAP
or memcache map) or a list of lines (pcre, cidr).
"""

import re

from ansible.errors import AnsibleFilterError

PARAMETER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
INSTANCE = re.compile(r"^[a-z][a-z0-9]*$")
ALL = "all"
SERVICE_FIELDS = ("service", "type", "private", "unpriv", "chroot", "wakeup", "maxproc", "command", "options", "state")
TABLE_FIELDS = ("path", "settings", "lines", "comment", "owner", "group", "mode", "secret")


def _render(label, name, value):
    """Return a main.cf value as text: lists become comma lists, booleans yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        if "\n" in value:
            raise AnsibleFilterError(f"{label}: {name} must be one line")
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(_render(label, name, item) for item in value)
    raise AnsibleFilterError(
        f"{label}: {name} must be a string, number, boolean or list, "
        f"not {type(value).__name__}"
    )


def _check_names(settings, label):
    if not isinstance(settings, dict):
        raise AnsibleFilterError(f"{label} must be a dict of main.cf parameters")
    for name in settings:
        if not isinstance(name, str) or not PARAMETER.match(name):
            raise AnsibleFilterError(f"{label}: '{name}' is not a main.cf parameter name")


def _check_layer(layer, label, instances):
    if layer is None:
        return {}
    if not isinstance(layer, dict):
        raise AnsibleFilterError(f"{label} must be a dict of instance name (or 'all') to settings")
    for instance, settings in layer.items():
        if instance != ALL and instance not in instances:
            known = ", ".join(sorted(instances))
            raise AnsibleFilterError(f"{label}: unknown postfix instance '{instance}' (known: all, {known})")
        _check_names(settings, f"{label}.{instance}")
    return layer


def _check_instances(instances):
    if not isinstance(instances, dict) or not instances:
        raise AnsibleFilterError("postfix instances must be a non-empty dict")
    for name, definition in instances.items():
        if not isinstance(name, str) or not INSTANCE.match(name):
            raise AnsibleFilterError(f"postfix instance name '{name}' must be lower case letters and digits")
        if definition is not None and not isinstance(definition, dict):
            raise AnsibleFilterError(f"postfix instance '{name}' must be a dict (main, listeners, services)")


def postfix_main_settings(*layers, label="main.cf"):
    """Merge flat dicts of main.cf parameters (later wins, null removes).

    Returns {param: text} sorted by name, the values rendered as main.cf text.
    """
    merged = {}
    for index, layer in enumerate(layers):
        if layer is None:
            continue
        _check_names(layer, f"{label} layer {index + 1}")
        merged.update(layer)
    return {key: _render(label, key, value) for key, value in sorted(merged.items()) if value is not None}


def postfix_instance_settings(instances, common, *layers):
    """Merge main.cf settings for every instance.

    instances: {name: {main: {...}, ...}} from the role; common: settings for all of them;
    layers: inventory dicts {all|name: {param: value}}, lowest precedence first.
    Returns {name: {param: text}} with parameters sorted by name.
    """
    _check_instances(instances)
    checked = [_check_layer(layer, f"settings layer {index + 1}", instances) for index, layer in enumerate(layers)]
    result = {}
    for name, definition in instances.items():
        own = [common, (definition or {}).get("main", {})]
        for layer in checked:
            own += [layer.get(ALL), layer.get(name)]
        result[name] = postfix_main_settings(*own, label=f"postfix instance '{name}'")
    return result


def _queue_directory(name):
    """An instance's queue directory (postmulti's own choice for postfix-<name>)."""
    return f"/var/spool/postfix-{name}" if name else "/var/spool/postfix"


def postfix_instance_units(instances):
    """The systemd units of the default instance and every other, for role service_restart.

    Debian's postfix@.service forks (postmulti starts the master) and knows no main
    process; the master's PID file in the instance's queue directory names it, so
    systemd sees the master die and restarts the instance.
    """
    _check_instances(instances)
    return [{"unit": f"postfix@{f'postfix-{name}' if name else '-'}", "restart": "on-failure",
             "pid_file": f"{_queue_directory(name)}/pid/master.pid"} for name in [""] + list(instances)]


def postfix_instance_identity(instances, group, log_names=True):
    """The settings postmulti fixes for each instance, as a layer {name: {...}}.

    Given as the last layer to postfix_instance_settings, so no other layer changes an
    instance's name, group or directories. log_names adds syslog_name postfix-<name> and
    mail_name Postfix-<name> (the name in the logs and in Received: headers).
    """
    _check_instances(instances)
    if not isinstance(group, str) or not INSTANCE.match(group):
        raise AnsibleFilterError(f"postfix instance group '{group}' must be lower case letters and digits")
    layer = {}
    for name in instances:
        layer[name] = {
            "multi_instance_name": f"postfix-{name}",
            "multi_instance_group": group,
            "multi_instance_enable": True,
            "queue_directory": _queue_directory(name),
            "data_directory": f"/var/lib/postfix-{name}",
        }
        if log_names:
            layer[name].update(syslog_name=f"postfix-{name}", mail_name=f"Postfix-{name}")
    return layer


def _service(entry, label):
    if not isinstance(entry, dict):
        raise AnsibleFilterError(f"{label}: a master.cf service must be a dict, not {type(entry).__name__}")
    unknown = sorted(set(entry) - set(SERVICE_FIELDS))
    if unknown:
        raise AnsibleFilterError(f"{label}: unknown master.cf field(s) {', '.join(unknown)} in {entry}")
    if "service" not in entry:
        raise AnsibleFilterError(f"{label}: master.cf service needs service: {entry}")
    if entry.get("state", "present") not in ("present", "absent"):
        raise AnsibleFilterError(f"{label}: state of service {entry['service']} is present or absent")
    if entry.get("state", "present") == "present" and "command" not in entry:
        raise AnsibleFilterError(f"{label}: master.cf service needs command: {entry}")
    return entry


def _listener(entry, label):
    """An SMTP listener: `port` (or host:port) with inet, private n, smtpd unless given."""
    if not isinstance(entry, dict) or "port" not in entry:
        raise AnsibleFilterError(f"{label}: a listener needs a port: {entry}")
    service = {"service": entry["port"], "type": "inet", "private": "n", "command": "smtpd"}
    service.update((key, value) for key, value in entry.items() if key != "port")
    return _service(service, label)


def _key(service):
    return (str(service["service"]), service.get("type", "inet"))


def _overlay(table, entries, label):
    """Replace table entries by key in place; return the entries the table lacks."""
    extra = []
    positions = {_key(service): index for index, service in enumerate(table)}
    for entry in entries or []:
        entry = _service(entry, label)
        key = _key(entry)
        if key in positions:
            table[positions[key]] = entry
        elif entry.get("state", "present") == "absent":
            raise AnsibleFilterError(
                f"{label}: service {'/'.join(key)} is not in the standard table, nothing to remove"
            )
        else:
            extra.append(entry)
    return extra


def postfix_instance_services(instances, standard, shared=None):
    """master.cf of every instance: {name: [service, ...]} in file order.

    The instance's listeners, its own services, the caller's shared services, then the
    standard table. A shared or own service with the name and type of a standard one
    replaces it in place (state: absent drops it); shared entries apply first.
    """
    _check_instances(instances)
    if not isinstance(standard, (list, tuple)) or not standard:
        raise AnsibleFilterError("the standard master.cf table must be a non-empty list")
    result = {}
    for name, definition in instances.items():
        definition = definition or {}
        label = f"postfix instance '{name}'"
        table = [_service(entry, "standard master.cf table") for entry in standard]
        shared_extra = _overlay(table, shared, "shared master.cf services")
        listeners = [_listener(entry, label) for entry in definition.get("listeners") or []]
        own_extra = _overlay(table, definition.get("services"), label)
        services = [
            service for service in listeners + own_extra + shared_extra + table
            if service.get("state", "present") == "present"
        ]
        seen = set()
        for service in services:
            if _key(service) in seen:
                raise AnsibleFilterError(f"{label}: master.cf service {'/'.join(_key(service))} appears twice")
            seen.add(_key(service))
        result[name] = [{k: v for k, v in service.items() if k != "state"} for service in services]
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
        text = _render(f"master.cf service {fields[0]}", key, value)
        if " " in text:
            # master.cf splits on spaces; {name = value} keeps them (Postfix 3.0+).
            lines.append(f"  -o {{ {key} = {text} }}")
        else:
            lines.append(f"  -o {key}={text}")
    return "\n".join(lines)


def postfix_ldap_tables(maps, directory, shared):
    """LDAP lookups as tables: <directory>/<name>.cf, the shared settings then the map's.

    maps: {name: {query_filter, result_attribute, ...}}; shared: the connection settings
    every map has (server_host, bind_dn, bind_pw, search_base, ...). The files hold the
    bind password: readable by group postfix only, and written without logging.
    """
    if not maps:
        return []
    if not isinstance(maps, dict):
        raise AnsibleFilterError("LDAP maps must be a dict of name to settings")
    if not directory or not str(directory).startswith("/"):
        raise AnsibleFilterError(f"LDAP maps need an absolute directory, not '{directory}'")
    tables = []
    for name, settings in maps.items():
        if not isinstance(name, str) or not re.match(r"^[a-z0-9][a-z0-9_.-]*$", name):
            raise AnsibleFilterError(f"LDAP map name '{name}' must be lower case letters, digits, '-', '_' or '.'")
        _check_names(settings, f"LDAP map '{name}'")
        tables.append({
            "path": f"{str(directory).rstrip('/')}/{name}.cf",
            "comment": f"Postfix LDAP lookup `{name}`.",
            "settings": dict(shared or {}, **settings),
            "group": "postfix",
            "mode": "0640",
            "secret": True,
        })
    return tables


def _references(text, path):
    """True when a main.cf or master.cf value names the table (path or type:path)."""
    return any(token == path or token.endswith(":" + path) for token in re.split(r"[\s,]+", text))


def postfix_tables(tables, settings, services):
    """Lookup tables ready to write: path, lines, owner, group, mode, secret, instances.

    tables: [{path, settings | lines, comment?, owner?, group?, mode?, secret?}];
    settings and services: the merged main.cf and master.cf of every instance, to find
    which instances name each table (their reload follows its change). A table no
    instance names outright (read through a $parameter, say) reloads them all.
    """
    if not isinstance(tables, (list, tuple)):
        raise AnsibleFilterError("postfix tables must be a list")
    values = {}
    for name in settings:
        texts = list(settings[name].values())
        for service in services.get(name, []):
            options = (service.get("options") or {}).items()
            texts += [_render(f"postfix instance '{name}'", key, value) for key, value in options]
        values[name] = texts
    result, paths = [], set()
    for table in tables:
        if not isinstance(table, dict) or not str(table.get("path", "")).startswith("/"):
            raise AnsibleFilterError(f"a postfix table needs an absolute path: {table}")
        path = str(table["path"])
        label = f"postfix table {path}"
        unknown = sorted(set(table) - set(TABLE_FIELDS))
        if unknown:
            raise AnsibleFilterError(f"{label}: unknown field(s) {', '.join(unknown)}")
        if path in paths:
            raise AnsibleFilterError(f"{label} is given twice")
        paths.add(path)
        if ("settings" in table) == ("lines" in table):
            raise AnsibleFilterError(f"{label} needs either settings (key = value) or lines")
        lines = [f"# {line}".rstrip() for line in str(table.get("comment") or "").splitlines()]
        if "settings" in table:
            _check_names(table["settings"], label)
            lines += [f"{key} = {_render(label, key, value)}" for key, value in table["settings"].items()]
        else:
            if not isinstance(table["lines"], (list, tuple)):
                raise AnsibleFilterError(f"{label}: lines must be a list of strings")
            for line in table["lines"]:
                if not isinstance(line, str) or "\n" in line:
                    raise AnsibleFilterError(f"{label}: every line must be one line of text: {line!r}")
            lines += list(table["lines"])
        users = [name for name, texts in values.items() if any(_references(text, path) for text in texts)]
        result.append({
            "path": path,
            "lines": lines,
            "owner": table.get("owner", "root"),
            "group": table.get("group", "root"),
            "mode": str(table.get("mode", "0644")),
            "secret": bool(table.get("secret", False)),
            "instances": users or list(settings),
        })
    return result


class FilterModule:
    def filters(self):
        return {
            "postfix_instance_settings": postfix_instance_settings,
            "postfix_instance_identity": postfix_instance_identity,
            "postfix_instance_units": postfix_instance_units,
            "postfix_instance_services": postfix_instance_services,
            "postfix_main_settings": postfix_main_settings,
            "postfix_master_line": postfix_master_line,
            "postfix_ldap_tables": postfix_ldap_tables,
            "postfix_tables": postfix_tables,
        }
