"""One exception tree: every error class of the package hangs under RefresherError, and the drawing in
refresher.domain's docstring is the tree the classes really form (so it cannot drift)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import refresher
from refresher import domain
from refresher.config import ConfigFileError, ConfigProblem, Settings
from refresher.domain import ConfigError, RefresherError, UnknownApp
from refresher.store.base import AccountNotFound, StoreError

# Raised and caught inside the sandbox's handlers to render a platform's error answer; never escape it.
SANDBOX_ANSWERS = {"SandboxRejection", "ShopeeError", "LazadaError"}
# Modules that do something on import (Alembic's env runs migrations; __main__ runs the CLI).
SKIP_MODULES = ("refresher.__main__", "refresher.store.migrations")


def package_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(refresher.__path__, "refresher."):
        if info.name.startswith(SKIP_MODULES):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[name] = obj
    return found


def drawn_tree() -> dict[str, tuple[str | None, str]]:
    """class name -> (drawn parent, drawn module) from the docstring's box drawing."""
    doc = domain.__doc__ or ""
    tree: dict[str, tuple[str | None, str]] = {}
    stack: list[str] = []
    for line in doc.splitlines():
        match = re.match(r"^ {4}((?:[│ ] {3})*)(?:[├└]── )?([A-Z]\w+)\s+([a-z_.]+)\s", line)
        if match is None:
            continue
        depth = len(match[1]) // 4 + (1 if "── " in line else 0)
        del stack[depth:]
        tree[match[2]] = (stack[-1] if stack else None, match[3])
        stack.append(match[2])
    return tree


def test_every_error_class_is_under_the_one_root() -> None:
    classes = package_exceptions()
    assert len(classes) > 20  # the walk found the package's errors, not nothing
    outside = sorted(n for n, c in classes.items() if not issubclass(c, RefresherError) and n not in SANDBOX_ANSWERS)
    assert outside == []


def test_the_drawing_matches_the_classes() -> None:
    classes = {n: c for n, c in package_exceptions().items() if n not in SANDBOX_ANSWERS}
    tree = drawn_tree()
    assert tree["RefresherError"] == (None, "domain")
    assert set(tree) == set(classes), "drawn and defined classes differ"
    for name, (parent, module) in tree.items():
        cls = classes[name]
        assert cls.__module__ == f"refresher.{module}", name
        if parent is not None:
            assert cls.__bases__ == (classes[parent],), f"{name} is drawn under {parent}"


def test_unknown_app_is_a_typed_config_error() -> None:
    settings = Settings()
    with pytest.raises(UnknownApp, match=r"unknown app 'nope' \(configured: none\)") as info:
        settings.app("nope")
    assert isinstance(info.value, ConfigError) and not isinstance(info.value, KeyError)


def test_library_errors_keep_their_one_line_messages() -> None:
    problem = ConfigProblem(file="a.yaml", path="apps.x.partner_key", line=3, message="field required")
    error = ConfigFileError([problem, problem])
    assert isinstance(error, RefresherError)
    assert str(error) == "a.yaml:3: apps.x.partner_key: field required\na.yaml:3: apps.x.partner_key: field required"
    assert str(AccountNotFound("no account 'x' in app 'y'")) == "no account 'x' in app 'y'"
    assert issubclass(AccountNotFound, StoreError) and issubclass(StoreError, RefresherError)
