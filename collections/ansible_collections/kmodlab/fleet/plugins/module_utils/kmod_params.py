"""A module's name and its parameters: what is accepted, and the modprobe.d text that keeps them (kmodlab).

Module names are checked (name_error) before any path is made of them, and module parameters (params_error)
before any is written to /etc/modprobe.d.
"""

from __future__ import annotations

import re

# A module name: what kbuild and modpost accept (modpost refuses 56 characters or more on a 64-bit
# kernel, MODULE_NAME_LEN), less '-', which kbuild and modprobe turn into '_' (so the loaded module
# would not be named as its file), and nothing a path or a glob pattern could use.
MODULE_NAME = re.compile(r"[A-Za-z0-9_]{1,55}\Z")
# A module parameter (params): its name as module_param() declares one (a C identifier), and its value in
# characters that neither modprobe's configuration (whitespace, '#', quotes, '\') nor the kernel's
# parse_args ('=', quotes) reads as anything but the value, nor a shell or a template would: letters,
# digits and _ . , : + - / (a list parameter's values are separated by ',').
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
PARAM_VALUE = re.compile(r"[A-Za-z0-9_.,:+/-]{1,255}\Z")


def name_error(name):
    """Why NAME cannot be a module's name (a message), or None when it can."""
    if isinstance(name, str) and MODULE_NAME.match(name):
        return None
    hint = " (kbuild and modprobe load a-b.ko as a_b: write '_')" if isinstance(name, str) and "-" in name else ""
    return "bad module name %r: a module name is 1 to 55 letters, digits and '_'%s; nothing was changed" % (
        name,
        hint,
    )


def param_value(value):
    """VALUE of a module parameter as modprobe.d holds it: a boolean as the kernel shows one (Y, N), a number
    in decimal, a string as it is."""
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value) if isinstance(value, int) else value


def params_error(params):
    """Why PARAMS (parameter name -> value) cannot be a module's parameters (a message), or None when they can."""
    if params is None:
        return None
    if not isinstance(params, dict):
        return "bad params %r: give a mapping of parameter names to values; nothing was changed" % (params,)
    bad = []
    for key in sorted(params, key=str):
        value = params[key]
        if not (isinstance(key, str) and PARAM_NAME.match(key)):
            bad.append("bad parameter name %r: a parameter name is a letter or '_', then up to 63 letters, digits "
                       "and '_'" % (key,))  # fmt: skip
        elif not (isinstance(value, (str, int)) and PARAM_VALUE.match(param_value(value))):
            bad.append("bad value %r of parameter %s: a value is a string, number or boolean of 1 to 255 letters, "
                       "digits and _ . , : + - /" % (value, key))  # fmt: skip
    return "; ".join(bad) + "; nothing was changed" if bad else None


def options_text(name, params):
    """The text of /etc/modprobe.d/kmodlab-NAME.conf that gives module NAME the parameters PARAMS (checked with
    params_error first), in name order; None when there are none (then there is no file)."""
    if not params:
        return None
    settings = " ".join("%s=%s" % (key, param_value(params[key])) for key in sorted(params))
    return "# Written by kmodlab: the parameters of %s; modprobe applies them at each load.\noptions %s %s\n" % (
        name,
        name,
        settings,
    )


def options_of(name, text):
    """The parameters (name -> value, as strings) the modprobe.d text TEXT gives module NAME."""
    params = {}
    for line in (text or "").splitlines():
        words = line.split()
        if words[:2] == ["options", name]:
            params.update(word.partition("=")[::2] for word in words[2:])
    return params


def options_changed(journal):
    """Whether the deployment JOURNAL records changes the module's parameters (a journal of an older kmodlab
    does not record them: no)."""
    before = journal["before"]
    return "options" in before and journal["new"].get("options") != before["options"]
