"""The reference server, configured like the recorded one, for what the recording lacks.

An option the recorded client never sent, or a request it never made, gets the
answer a reference server would give if it had the recorded server's export
(size, transmission flags, block sizes, description, the metadata contexts it
offered) and its options (those it answered, and what they imply), serving the
image reconstructed from the recording.  Options the recording never shows
are refused with ``NBD_REP_ERR_UNSUP``: nothing says the recorded server had
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.protocol import constants as c
from harness.protocol.messages import ExportNameReply, OptionReply, OptionRequest, Request
from harness.protocol.state import Negotiated, Violation
from reference_server import (
    Executor,
    OptionContext,
    Reply,
    answer_option,
    transmission_flags,
)
from reference_server.config import ExportConfig, ServerConfig
from reference_server.features import ServerFeatures
from reference_server.storage import ExportRegistry

from ._serve_image import ReplayImage
from ._serve_script import Script

TF = c.TransmissionFlag

ALWAYS_OFFERED = frozenset({c.Opt.EXPORT_NAME, c.Opt.ABORT, c.Opt.LIST})
"""Options every newstyle server has (a refusal in the recording still wins)."""
IMPLIED = {
    c.Opt.GO: (c.Opt.INFO,),
    c.Opt.INFO: (c.Opt.GO,),
    c.Opt.SET_META_CONTEXT: (c.Opt.LIST_META_CONTEXT,),
    c.Opt.LIST_META_CONTEXT: (c.Opt.SET_META_CONTEXT,),
    # "When successful, this option takes precedence over structured replies": a server
    # with extended headers has structured replies too.
    c.Opt.EXTENDED_HEADERS: (c.Opt.STRUCTURED_REPLY,),
}


class _ImageRegistry(ExportRegistry):
    """The registry of a one-export server whose backend is the reconstructed image."""

    def __init__(self, export: ExportConfig, image: ReplayImage) -> None:
        super().__init__([export])
        self._image = image

    def backend(self, export: ExportConfig | str) -> ReplayImage:
        return self._image

    def close(self) -> None:
        """The image outlives every connection: nothing to close."""


@dataclass
class HonestServer:
    """The reference server's answers, configured from a recorded session."""

    config: ServerConfig
    features: ServerFeatures
    image: ReplayImage
    registry: ExportRegistry

    @property
    def export(self) -> ExportConfig:
        return self.config.exports[0]

    def context(self, neg: Negotiated) -> OptionContext:
        return OptionContext(self.config, self.features, self.registry, neg, False)

    def answer_option(self, request: OptionRequest, neg: Negotiated,
                      violations: list[Violation]) -> tuple[list[OptionReply], bool]:
        """The replies to an option other than EXPORT_NAME, and whether to close after them."""
        outcome = answer_option(self.context(neg), request, violations)
        return list(outcome.replies), outcome.close or outcome.start_tls

    def answer_export_name(self, neg: Negotiated,
                           violations: list[Violation]) -> ExportNameReply | None:
        """The answer to NBD_OPT_EXPORT_NAME, or None: close ("MUST terminate the session")."""
        export = self.config.export(neg.export_name or "")
        if export is None or violations:
            return None
        flags = transmission_flags(self.context(neg), export)
        return ExportNameReply(self.image.size, flags, zeroes=not neg.no_zeroes)

    def execute(self, request: Request, neg: Negotiated,
                violations: list[Violation]) -> list[Reply]:
        """The replies to a request, served from the image."""
        executor = Executor(neg, self.export, self.image, self.features.quirks)
        return executor.execute(request, violations)


def honest_server(script: Script, image: ReplayImage, export_name: str) -> HonestServer:
    """A reference server like the one ``script`` recorded, serving ``image`` as
    ``export_name``."""
    facts = script.facts
    flags = TF(facts.transmission_flags)
    block = facts.block_size
    export = ExportConfig(
        name=export_name,
        size=image.size,
        read_only=image.read_only or facts.read_only,
        description=facts.description,
        min_block_size=block.minimum if block else c.DEFAULT_MIN_BLOCK,
        preferred_block_size=block.preferred if block else c.DEFAULT_PREFERRED_BLOCK,
        max_payload_size=block.maximum if block else c.DEFAULT_MAX_PAYLOAD,
        block_size_configured=block is not None,
        multi_conn=bool(flags & TF.CAN_MULTI_CONN),
        rotational=bool(flags & TF.ROTATIONAL),
        fast_zero=bool(flags & TF.SEND_FAST_ZERO),
        allocation_depth=c.QEMU_ALLOCATION_DEPTH in image.contexts,
    )
    refused_list = c.Rep.ERR_POLICY in script.option_outcomes(c.Opt.LIST)
    config = ServerConfig(exports=(export,), list_exports=not refused_list)
    greeting_flags = getattr(script.greeting, "handshake_flags", 0)
    features = ServerFeatures(
        name=f"as recorded (session {script.index})",
        options=offered_options(script),
        no_zeroes=bool(greeting_flags & c.HandshakeFlag.NO_ZEROES),
        info_block_size=not facts.block_size_withheld,
        write_zeroes=bool(flags & TF.SEND_WRITE_ZEROES),
        fast_zero=bool(flags & TF.SEND_FAST_ZERO),
        trim=bool(flags & TF.SEND_TRIM),
        flush=bool(flags & TF.SEND_FLUSH),
        fua=bool(flags & TF.SEND_FUA),
        cache=bool(flags & TF.SEND_CACHE),
        df=bool(flags & TF.SEND_DF),
        block_status_payload=bool(flags & TF.BLOCK_STATUS_PAYLOAD),
        init_state=False,
        multi_conn="always" if flags & TF.CAN_MULTI_CONN else "never",
        quirks=frozenset({"unflagged-extended-write"} if facts.unflagged_writes_performed
                         else ()),
    )
    return HonestServer(config, features, image, _ImageRegistry(export, image))


def offered_options(script: Script) -> frozenset[int]:
    """Options the recorded server answered (and what they imply), minus those it refused
    with ``NBD_REP_ERR_UNSUP``."""
    offered = set(ALWAYS_OFFERED)
    refused = set()
    for option in script.options:
        final = option.final
        if final is not None and final.reply_type == c.Rep.ERR_UNSUP:
            refused.add(option.request.option)
        elif option.answered:
            offered.add(option.request.option)
    for option in list(offered):
        offered.update(IMPLIED.get(option, ()))
    return frozenset(offered - refused)


__all__ = ["HonestServer", "honest_server", "offered_options"]
