"""The server-role runner: a scenario's steps, played by the reference client against a server.

:func:`run_server_scenario` runs one scenario against the server under test at
a URI (the matrix runner started it, serving the scenario's export) and
returns a :class:`~harness.scenarios.ScenarioResult`: ``pass``; ``fail`` (the
expectation that failed, expected vs got, is in ``detail`` and in the step's
result); ``unsupported`` (a required feature is missing and the server said so
correctly: a flag not advertised, ``NBD_REP_ERR_UNSUP``...);
``expected-fallback`` (the scenario's fallback expectations held); ``error``
(the harness or the environment broke, including a scenario the reference
client cannot play, such as TLS-PSK).

What a step needs and how an outcome is judged against a step's expectation
belong to the scenario format (:mod:`harness.scenarios`); this package only
drives the connections.  :class:`ServerRun` is one run; the fuzzer drives it a step
at a time (:meth:`ServerRun.run_step`, :meth:`ServerRun.finish`).
"""

from ._run import ServerRun, run_server_scenario

__all__ = ["ServerRun", "run_server_scenario"]
