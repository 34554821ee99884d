"""Where Sigma's Linux log sources land in DutyWatch: event kinds and one field table.

A Sigma rule names a log source (``product: linux`` plus a ``category``) and
Sysmon-style field names. Each supported category restricts the rule to the
DutyWatch event kinds that carry that kind of record, and maps the fields
to catalogue fields (DESIGN §4). A field outside the table is an unsupported
field: the rule is reported, never half-compiled.

Every event carries its process group, so the process fields are offered in
all three categories (Sysmon's network and file records carry ``Image``,
``User`` and ``ProcessId`` as well).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.events import FIELDS

# Special targets that are not a single catalogue field.
INITIATED = "@initiated"  # net.connect (the host initiated) versus net.accept
TARGET_FILE = "@target_file"  # file.path, or file.dest_path for a rename

RENAME_KIND = "file.rename"

PROCESS_FIELDS: Mapping[str, str] = {
    "Image": "process.exe",
    "CommandLine": "process.cmdline",
    "CurrentDirectory": "process.cwd",
    "User": "process.user",
    "ProcessId": "process.pid",
    "ParentProcessId": "process.ppid",
    "LogonId": "process.loginuid",
    "ParentImage": "parent.exe",
    "ParentCommandLine": "parent.cmdline",
}

NETWORK_FIELDS: Mapping[str, str] = {
    "DestinationIp": "net.remote_ip",
    "DestinationPort": "net.remote_port",
    "DestinationHostname": "net.domain",
    "SourceIp": "net.local_ip",
    "SourcePort": "net.local_port",
    "Protocol": "net.proto",
    "Initiated": INITIATED,
}

FILE_FIELDS: Mapping[str, str] = {
    "TargetFilename": TARGET_FILE,
}


@dataclass(frozen=True, slots=True)
class Category:
    """A supported Sigma log source category: its event kinds, fields and finding message."""

    name: str
    kinds: tuple[str, ...]
    fields: Mapping[str, str]
    message_en: str
    message_zh: str

    def field(self, sigma_name: str) -> str | None:
        """The DutyWatch field (or special target) of a Sigma field name, if mapped."""
        return self.fields.get(sigma_name)


CATEGORIES: Mapping[str, Category] = {
    "process_creation": Category(
        "process_creation", ("process.exec",), PROCESS_FIELDS,
        "{operator.name} ({process.user}) ran {process.cmdline} ({process.exe}), parent {parent.exe}",
        "{operator.name}（{process.user}）运行 {process.cmdline}（{process.exe}），父进程 {parent.exe}"),
    # Sysmon's network record covers both directions, told apart by Initiated;
    # DutyWatch tells them apart by kind (the collectors set direction out/in to match).
    "network_connection": Category(
        "network_connection", ("net.connect", "net.accept"), {**PROCESS_FIELDS, **NETWORK_FIELDS},
        "{process.exe} ({operator.name}) {net.direction} {net.proto} {net.remote_ip}:{net.remote_port}"
        " {net.domain}",
        "{process.exe}（{operator.name}）网络连接 {net.direction} {net.proto} {net.remote_ip}:{net.remote_port}"
        " {net.domain}"),
    # Sysmon's FileCreate fires on creation and on overwrite; a rename creates its
    # target name, so renames are matched on their destination path.
    "file_event": Category(
        "file_event", ("file.create", "file.write", RENAME_KIND), {**PROCESS_FIELDS, **FILE_FIELDS},
        "{process.exe} ({operator.name}) wrote {file.path} (rename target {file.dest_path})",
        "{process.exe}（{operator.name}）写入 {file.path}（重命名目标 {file.dest_path}）"),
}


def field_type(dotted: str) -> str:
    """The catalogue type of a mapped field (``str`` or ``int``); special targets are ``special``."""
    spec = FIELDS.get(dotted)
    return spec.type if spec is not None else "special"


__all__ = ["CATEGORIES", "INITIATED", "RENAME_KIND", "TARGET_FILE", "Category", "field_type"]
