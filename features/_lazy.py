"""Lazy public names for a package `__init__` (PEP 562): each name loads its submodule on first use."""

from importlib import import_module


def lazy_exports(package_globals, exports):
    """The module-level `__getattr__` and `__dir__` of a package whose public names load on first use.

    Args:
        package_globals: the package's `globals()`; loaded names are stored there, so later
            look-ups skip `__getattr__`.
        exports: public name -> the submodule that defines it.

    Example:
        >>> __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
    """

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package_globals['__name__']!r} has no attribute {name!r}")
        module = import_module(exports[name])
        # Every public name of that submodule becomes a module attribute: later look-ups skip this function.
        for public_name, owner in exports.items():
            if owner == module.__name__:
                package_globals[public_name] = getattr(module, public_name)
        return package_globals[name]

    def __dir__():
        return sorted(set(package_globals) | set(package_globals["__all__"]))

    return __getattr__, __dir__
