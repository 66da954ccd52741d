"""The platform's helper scripts (roles/*/files, no .py suffix) loaded as modules, and a
stand-in for pymilter's Milter module so the milters' callbacks run without libmilter
(the lab runs the real one)."""

import importlib.machinery
import importlib.util
import types
from pathlib import Path

ROLES = Path(__file__).resolve().parents[2] / "roles"


def load(script):
    """roles/<script> as a module (conftest puts role common's shared modules on the path,
    as role common installs them next to the scripts)."""
    loader = importlib.machinery.SourceFileLoader(Path(script).name.replace("-", "_"), str(ROLES / script))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


class MilterBase:
    """Milter.Base: macros from `macros`, every reply and header change kept in `changes`."""

    macros = {"i": "4ABCD1"}

    def getsymval(self, name):
        return self.macros.get(name)

    def record(self, *change):
        # pymilter passes str values to libmilter as UTF-8 C strings: a lone surrogate or
        # a NUL would fail there, so they fail here too.
        for value in change:
            if isinstance(value, str):
                value.encode("utf-8")
                assert "\0" not in value, change
        self.__dict__.setdefault("changes", []).append(change)

    def setreply(self, *reply):
        self.record("setreply", *reply)

    def addheader(self, name, value, index=-1):
        self.record("addheader", name, value)

    def chgheader(self, name, index, value):
        self.record("chgheader", name, index, value)

    def quarantine(self, reason):
        self.record("quarantine", reason)


Milter = types.ModuleType("Milter")
Milter.Base = MilterBase
Milter.CONTINUE, Milter.ACCEPT, Milter.TEMPFAIL, Milter.DISCARD = "continue", "accept", "tempfail", "discard"
Milter.noreply = lambda callback: callback


def run_milter(milter, sender, recipients, headers, body=b""):
    """One message through a milter's callbacks; eom's answer."""
    milter.envfrom(f"<{sender}>")
    for recipient in recipients:
        milter.envrcpt(f"<{recipient}>")
    for name, value in headers:
        milter.header(name, value)
    if body:
        milter.body(body)
    return milter.eom()
