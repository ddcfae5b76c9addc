"""``nbd-harness fuzz``: a hypothesis-driven protocol fuzzer that hands back replayable scenarios.

A campaign drives one peer with a :class:`hypothesis.stateful.RuleBasedStateMachine`
(:mod:`.machine`) whose rules are scenario steps (:mod:`.strategies`): negotiation
choices, options with valid and mutated payloads, requests within and around the
export, pipelined bursts, byte-mutated requests and disconnects at any point.  Each
step runs through the server-role step runner (the one ``scenarios run`` uses), every
example is recorded by the capture proxy and judged by the conformance rules, and the
data read back is compared with the model of the export.  A failure is shrunk by
hypothesis and written out as a scenario YAML plus its pcapng (:mod:`.writer`);
:mod:`.runner` holds budgets, seeds and the summary; :mod:`.target` the peer under
test (its crashes and restarts); :mod:`.cut` the cutting relay and :mod:`.clients` the
client campaign and the disconnect-at-every-point cases.
"""

from .runner import Campaign, CampaignSummary, FuzzFailure, run_campaign

__all__ = ["Campaign", "CampaignSummary", "FuzzFailure", "run_campaign"]
