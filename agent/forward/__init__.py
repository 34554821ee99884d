"""Forwarding findings and journal checkpoint heads to a SIEM as RFC 5424 syslog."""

from agent.forward.forwarder import ForwardStats, SyslogForwarder
from agent.forward.rfc5424 import format_record
from agent.forward.target import SyslogTarget, TLSOptions, parse_target

__all__ = ["ForwardStats", "SyslogForwarder", "SyslogTarget", "TLSOptions", "format_record", "parse_target"]
