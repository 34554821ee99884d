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
    "trend_hour": ("每小时趋势", "Trend per hour"),
    "trend_5min": ("每 5 分钟趋势", "Trend per 5 minutes"),
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
    "ctl_issues": ("期间有发现或没有规则证据的控制点", "Controls with findings in the period or without rule evidence"),
    "ctl_rules": ("在用规则 {n} 条", "rules in force: {n}"),
    "ctl_more": ("另 {n} 条规则无发现", "+{n} rules without findings"),
    "ctl_quiet": ("其余控制点在受监控的时间内没有发现：{list}。每条规则及其计数见 JSON 报告。",
                  "The other controls found nothing in the monitored time: {list}. Every rule and its count is "
                  "in the JSON report."),
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
    "person": ("责任人", "Person"),
    "own_unit": ("本人所在单位", "Their own unit"),
    "host_unit": ("主机运行单位", "Host's unit"),
    "role": ("责任角色", "Role"),
    "role_operator": ("操作人员", "operator"),
    "role_host.custodian": ("主机责任人", "custodian"),
    "role_media.holder": ("介质持有人", "media holder"),
    "per_owner": ("数据所属单位（涉密资产的主管单位）", "Units owning the data (the classified assets' owners)"),
    "owner_unit": ("数据所属单位", "Owning unit"),
    "custodian": ("主机责任人", "Custodian"),
    "host_level": ("密级 / 网络", "Level / network"),
    "count": ("次数", "Count"),
    "first_seen": ("首次", "First"),
    "last_seen": ("末次", "Last"),
    "program": ("程序", "Program"),
    "grouped": ("按规则、人员和对象归并", "Grouped by rule, person and object"),
    "groups_listed": ("列出 {listed} 组，共 {total} 组（完整列表见 JSON/CSV）。",
                      "{listed} of {total} groups listed (all of them in JSON/CSV). "),
    "groups_folded": ("另有 {n} 项发现超出可归并的组数，只计入总数。",
                      "{n} more findings beyond the groups kept are counted in the totals only."),
    "details": ("明细（每组最多列出 {n} 条，其余计入该组次数）",
                "Details (at most {n} per group; the rest are in its count)"),
    "unattributed_n": ("{n} 项发现没有可追责的操作人员（严重程度高的在前）。",
                       "{n} findings have no operator to answer for them (most severe first)."),
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
    "down": ("停机时长（抓取失败）", "Down time (failed scrapes)"),
    "prom_down_note": ("停机时长从中断后第一次抓取失败算起；监控覆盖（第一页）从最后一次心跳或记录算起，"
                       "因此每次中断后者多出最多一个 journal.heartbeat 加一个抓取间隔。停机时长超过未受监控时间时，"
                       "说明代理在运行但没有应答抓取（负载或网络）。",
                       "Down time counts from the first failed scrape after an interruption; the coverage on page 1 "
                       "counts from the last heartbeat or record, so it is longer by up to one journal.heartbeat "
                       "plus one scrape interval per interruption. Down time beyond the unmonitored time means the "
                       "agent ran but did not answer scrapes (load, network)."),
    "prom_data_since": ("Prometheus 最早数据", "First Prometheus data"),
    "prom_never": ("期间内没有任何数据", "no data in the period"),
    "prom_no_data": ("无数据时长（不计为停机）", "Time without data (not down time)"),
    "prom_no_data_col": ("无数据", "No data"),
    "prom_no_rate": ("“—”：有数据的时间不足一天，不把更短时间内的数字外推为每日比率。",
                     "“—”: less than a day of data, so no count is projected to a daily rate."),
    "prom_vs_journal": ("本机日志与 Prometheus 的违规数", "Violations: this journal and Prometheus"),
    "prom_journal": ("本机日志", "This journal"),
    "prom_differs": ("两者不同是正常的：Prometheus 的计数来自按抓取间隔采样的计数器，increase() 会外推到区间两端，"
                     "代理重启时计数器归零、重启前最后一次抓取之后的增量会丢失，并且它统计该单位的所有主机；"
                     "本机日志逐条记录，是准确的数字。",
                     "The two differ, as expected: Prometheus counts come from counters sampled every scrape "
                     "interval, increase() extrapolates to the edges of the range, a counter restarts with the agent "
                     "(what came after its last scrape is lost), and it counts every host of the unit; the journal "
                     "holds each finding and is the exact figure."),
    "rate": ("每主机每日违规", "Violations per host per day"),
    "none": ("无", "none"),
    # verdict (page 1)
    "s_verdict": ("结论", "Verdict"),
    "banner_failed": ("未纳入本报告：{kind} {path}（主机 {host}）验证失败：{problem}。其记录不计入本报告的任何数字。",
                      "Left out of this report: {kind} {path} (host {host}) failed verification: {problem}. "
                      "None of its records is in any figure of this report."),
    "banner_refused": ("未纳入本报告：证据包 {path}（主机 {host}）被拒绝：{problem}。其记录不计入本报告的任何数字。",
                       "Left out of this report: bundle {path} (host {host}) was refused: {problem}. "
                       "None of its records is in any figure of this report."),
    "banner_no_coverage": ("期间内没有任何监控（0 秒）：本报告不能说明期间内是否发生违规或监控中断。",
                           "Nothing was monitored in this period (0 s): this report cannot say whether "
                           "violations or interruptions happened."),
    "banner_partial": ("期间内有 {unmonitored} 未受监控（监控覆盖 {share}）：以下结论只对受监控的时间成立。",
                       "{unmonitored} of the period was not monitored (coverage {share}): the conclusions below "
                       "hold only for the monitored time."),
    "coverage": ("监控覆盖", "Monitoring coverage"),
    "still_running": ("{hosts}：日志中最后一次运行没有停止记录（代理被终止，或仍在运行）。运行中的代理在一段时间"
                      "（journal.heartbeat，默认 5 分钟）没有任何记录时写入一条签名的心跳记录，因此最后一次心跳或记录"
                      "之后的时间无法证明受到监控，本报告不把它算作受监控。",
                      "{hosts}: the last run in the journal has no stop record (the agent was killed, or is still "
                      "running). A running agent journals a signed heartbeat whenever it has written nothing for "
                      "a while (journal.heartbeat, 5 minutes by default), so the time after its last heartbeat or "
                      "record is not proven to be monitored, and this report does not count it."),
    "monitored": ("受监控", "Monitored"),
    "before_start": ("首次启动前", "Before the first start"),
    "gaps_col": ("中断", "Gaps"),
    "after_last": ("最后一次心跳或记录后", "After the last heartbeat or record"),
    "share": ("覆盖率", "Share"),
    "v_violations": ("违规 {n} 起：{parts}。", "{n} violations: {parts}."),
    "v_no_violations": ("在受监控的 {monitored} 内没有发现违规。", "No violations in the {monitored} monitored."),
    "v_no_conclusion": ("期间内没有受监控的时间，无法得出“没有违规”的结论。",
                        "No time in the period was monitored: no conclusion about violations is possible."),
    "v_people": ("主要责任人：{list}", "Main people answering: {list}"),
    "v_units": ("主要责任单位：{list}", "Main units answering: {list}"),
    "v_integrity": ("完整性：记录 {first}..{last} 验证通过；本期间最后一条记录（第 {seq} 条）的链哈希 "
                    "{hash}，{signed}。",
                    "Integrity: records {first}..{last} verified; the period's last record (seq {seq}) has chain "
                    "hash {hash}, {signed}."),
    "v_signed": ("由第 {seq} 条记录处的签名检查点（{time}）签名", "signed by the checkpoint at seq {seq} ({time})"),
    "v_unsigned": ("尚未被签名检查点覆盖（只有哈希链）", "not yet covered by a signed checkpoint (hash chain only)"),
    "v_integrity_empty": ("完整性：日志验证通过，但本期间没有任何记录，完整性验证对本期间没有可证明的内容。",
                          "Integrity: the journal verified, but the period holds no record, so there is nothing "
                          "of this period for it to vouch for."),
    "v_bundles_ok": ("完整性：{n} 个证据包验证通过。", "Integrity: {n} bundles verified."),
    "v_bundles_through": ("其中 {k} 个证据包超出本期间，只验证到本期间最后一条记录为止（见第六节）；"
                          "超出部分本报告既不显示也不担保。",
                          "{k} of them extend beyond the period and are vouched for only through the period's last "
                          "record (section 6); what lies beyond is neither shown nor vouched for here."),
    "through_bundle": ("（本期间最后一条记录；证据包含有到第 {last} 条的记录，超出本期间，未验证）",
                       " (the period's last record; the bundle holds records up to {last}, beyond the period, "
                       "not checked)"),
    "signed_manifest": ("证据包的签名清单（其后没有检查点，整个证据包均已验证）",
                        "the bundle's signed manifest (no checkpoint after it: the whole bundle was checked)"),
    "v_key_trusted": ("验证密钥由审计人员提供（可信来源）：{source}。", "The key was given by the auditor (a trusted "
                      "source): {source}."),
    "v_key_self": ("验证密钥取自被审计主机本身（{source}），相当于主机自证；"
                   "请用 --pubkey 或 --keys 提供经可信渠道取得的公钥。",
                   "The key came from the audited host itself ({source}): the host checked itself. Pass --pubkey "
                   "or --keys with a key obtained through a trusted channel."),
    "no_findings_watched": ("在受监控的时间内没有发现。", "No findings in the monitored time."),
    "gaps_none_full": ("期间内全程受监控，没有监控中断。", "Monitored for the whole period, no gaps."),
    "unmonitored": ("未受监控的时段", "Unmonitored stretches"),
    "where": ("位置", "Where"),
    "w_before": ("首次启动前", "before the first start"),
    "w_gap": ("中断", "gap"),
    "w_no_evidence": ("缺少证据包", "no evidence bundle"),
    "w_after": ("最后一次心跳或记录后", "after the last heartbeat or record"),
    "through": ("本期间最后一条记录", "Last record of the period"),
    "signed_by": ("签名检查点", "Signed by"),
    "key_trust": ("密钥可信度", "Key trust"),
    "trusted": ("审计人员提供（可信）", "given by the auditor (trusted)"),
    "self_key": ("取自被审计主机本身（自证，不独立）", "from the audited host itself (not independent)"),
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
