"""The report's words in Chinese and English."""

from __future__ import annotations

LANGS = ("zh", "en")

_S: dict[str, tuple[str, str]] = {
    "title": ("合规审计报告", "Compliance audit report"),
    "fleet_title": ("合规审计报告（多主机汇总）", "Compliance audit report (fleet)"),
    "period": ("报告期间", "Period"),
    "generated": ("生成时间", "Generated"),
    "source": ("数据来源", "Source"),
    "timezone": ("时区", "Time zone"),
    "src_journal": ("本机审计日志", "local journal"),
    "src_bundles": ("证据包", "evidence bundles"),
    "open_start": ("最早记录", "first record"),
    "open_end": ("最新记录", "latest record"),
    "contents": ("目录", "Contents"),
    # sections
    "s_summary": ("一、概况", "1. Summary"),
    "s_controls": ("二、控制点覆盖", "2. Control coverage"),
    "s_account": ("三、责任追究（谁运行谁负责、谁主管谁负责）",
                  "3. Accountability (who operates answers; who supervises answers)"),
    "s_violations": ("四、违规事件及证据", "4. Violations and evidence"),
    "s_continuity": ("五、监控连续性", "5. Monitoring continuity"),
    "s_integrity": ("六、完整性验证", "6. Integrity"),
    "s_fleet": ("七、全网指标（Prometheus）", "7. Fleet metrics (Prometheus)"),
    # summary
    "records": ("期间记录数", "Records in period"),
    "findings": ("发现总数", "Findings"),
    "violations": ("违规（告警）", "Violations (alert)"),
    "audits": ("审计记录", "Audit records"),
    "hosts": ("主机数", "Hosts"),
    "by_severity": ("按严重程度", "By severity"),
    "by_unit": ("按部门和单位", "By department and unit"),
    "trend": ("每日趋势", "Trend per day"),
    "by_unit_chart": ("各单位发现数", "Findings per unit"),
    "department": ("主管部门", "Department"),
    "unit": ("运行单位", "Unit"),
    "total": ("合计", "Total"),
    "host_list": ("主机", "Hosts"),
    "no_findings": ("期间内没有发现。", "No findings in the period."),
    "unregistered": ("（未登记）", "(not registered)"),
    "other_keys": ("（其余合并）", "(others, merged)"),
    # severities and actions
    "critical": ("严重", "critical"),
    "high": ("高", "high"),
    "medium": ("中", "medium"),
    "low": ("低", "low"),
    "info": ("提示", "info"),
    "alert": ("告警", "alert"),
    "audit": ("审计", "audit"),
    # controls
    "control": ("控制点", "Control"),
    "area": ("类别", "Area"),
    "items": ("测评项", "Test items"),
    "requirement": ("要求", "Requirement"),
    "rules": ("规则", "Rules"),
    "status": ("状态", "Status"),
    "st_found": ("期间有发现", "findings in period"),
    "st_quiet": ("有规则，期间无发现", "rules active, nothing found"),
    "st_none": ("无规则证据", "no rule evidence"),
    "bi_integrity": ("另见第六节：哈希链、签名检查点与 verify 结果", "also section 6: hash chain, signed "
                     "checkpoints and the verify result"),
    "bi_export": ("另见签名证据包（dutywatch export）与全网汇总", "also signed evidence bundles "
                  "(dutywatch export) and the fleet report"),
    "bi_retention": ("由日志保留期（journal.retention_days，默认 180 天）证明",
                     "evidenced by journal retention (journal.retention_days, 180 days by default)"),
    # accountability
    "per_operator": ("按操作人员", "Per operator"),
    "per_unit": ("按单位", "Per unit"),
    "operator": ("操作人员", "Operator"),
    "top_rules": ("主要规则", "Main rules"),
    "unattributed": ("无人负责的操作（ZR-001/ZR-002 或操作人员未知）",
                     "Unattributed operations (ZR-001/ZR-002 or operator unknown)"),
    "unknown": ("（未知）", "(unknown)"),
    "none_unattributed": ("期间内没有无人负责的操作。", "No unattributed operations in the period."),
    # violations
    "time": ("时间", "Time"),
    "host": ("主机", "Host"),
    "process": ("进程", "Process"),
    "object": ("对象", "Object"),
    "rule": ("规则", "Rule"),
    "severity": ("级别", "Severity"),
    "message": ("说明", "Message"),
    "listed_of": ("列出 {listed} 条，共 {total} 条（按严重程度、时间排序）",
                  "{listed} of {total} listed (by severity, then time)"),
    "omitted": ("未列出：{parts}", "Not listed: {parts}"),
    "none_violations": ("期间内没有违规。", "No violations in the period."),
    # continuity
    "runs": ("运行时段", "Runs"),
    "start": ("启动", "Start"),
    "stop": ("停止", "Stop"),
    "clean": ("正常停止", "clean stop"),
    "no_stop": ("无停止记录", "no stop recorded"),
    "gaps": ("监控中断（agent.tamper）", "Gaps (agent.tamper)"),
    "gap_total": ("中断合计", "Total gap time"),
    "from": ("自", "From"),
    "to": ("至", "To"),
    "length": ("时长", "Length"),
    "none_gaps": ("期间内没有监控中断。", "No gaps in the period."),
    "life_events": ("生命周期记录（启动、停止、重载、规则变更）",
                    "Lifecycle records (start, stop, reload, rule changes)"),
    "kind": ("类型", "Kind"),
    "detail": ("详情", "Detail"),
    "counts": ("次数", "Counts"),
    "reload_failures": ("重载失败", "Failed reloads"),
    "life_listed": ("列出 {listed} 条，共 {total} 条", "{listed} of {total} listed"),
    # integrity
    "verify_ok": ("验证通过", "verified"),
    "verify_bad": ("验证失败", "FAILED"),
    "result": ("结果", "Result"),
    "chain_head": ("链头哈希", "Chain head hash"),
    "seq_range": ("记录序号", "Records (seq)"),
    "fingerprint": ("密钥指纹", "Key fingerprint"),
    "crypto_suite": ("密码算法", "Crypto suite"),
    "suite_intl": ("intl：SHA-256 哈希链，Ed25519 签名", "intl: SHA-256 hash chain, Ed25519 signatures"),
    "suite_gm": ("gm（国密）：SM3 哈希链，SM2 签名（标识 1234567812345678）",
                 "gm (Chinese commercial cryptography): SM3 hash chain, SM2 signatures (ID 1234567812345678)"),
    "key_source": ("验证密钥来源", "Key used"),
    "period_seqs": ("本期记录序号", "Seqs in this period"),
    "statement": ("审计人员可以用以下命令独立核验（HOST-PUBKEY.pem 为该主机经可信渠道取得的公钥，"
                  "由 dutywatch journal pubkey 输出）：",
                  "Auditors can check this independently with the command below (HOST-PUBKEY.pem is the "
                  "host's public key obtained through a trusted channel, as printed by dutywatch journal pubkey):"),
    "refused": ("被拒绝的证据包（未纳入本报告）", "Refused bundles (left out of this report)"),
    "bundle": ("证据包", "Bundle"),
    "problem": ("问题", "Problem"),
    # fleet
    "prom_url": ("Prometheus 地址", "Prometheus"),
    "hosts_monitored": ("受监控主机", "Hosts monitored"),
    "down_total": ("代理停机合计", "Agent down time, all targets"),
    "instance": ("目标", "Target"),
    "down": ("停机时长", "Down time"),
    "rate": ("每主机每日违规", "Violations per host per day"),
    "none": ("无", "none"),
}


def tr(lang: str, key: str, **fmt: object) -> str:
    """The string ``key`` in ``lang``, with ``{name}`` fields filled from ``fmt``."""
    zh, en = _S[key]
    text = zh if lang == "zh" else en
    return text.format(**fmt) if fmt else text


def duration(lang: str, seconds: float) -> str:
    """A length of time in days, hours, minutes and seconds."""
    s = round(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    units = ("天", "小时", "分", "秒") if lang == "zh" else ("d", "h", "m", "s")
    parts = [f"{v}{u}" if lang == "zh" else f"{v} {u}" for v, u in zip((d, h, m, s), units, strict=True) if v]
    return ("" if lang == "zh" else " ").join(parts) or ("0秒" if lang == "zh" else "0 s")
