"""The Knative Functions entry point: ``func`` serves ``function.new`` with ``func-python``.

The function is the query function of ``functions`` (``functions.knative_function``); this
package only gives it the name ``func``'s scaffolding imports.
"""

from functions.knative_function import new

__all__ = ["new"]
