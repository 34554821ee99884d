"""The controls DutyWatch evidences: GB/T 22239-2019 clauses and secrecy rules.

Rules cite these names exactly in ``controls:`` so reports can group by them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Control:
    """One control with its test items and area."""

    name: str
    items: tuple[str, ...]
    area_zh: str
    area_en: str
    summary_zh: str
    summary_en: str


CONTROLS: tuple[Control, ...] = (
    Control("GB/T 22239-2019 8.1.4.1", ("L3-CES1-01", "L3-CES1-02", "L3-CES1-03"), "身份鉴别",
            "Identification and authentication",
            "用户身份标识唯一；具有登录失败处理功能，限制非法登录次数；远程管理防窃听",
            "Unique user identities; failed logins handled and their number limited; remote management protected"),
    Control("GB/T 22239-2019 8.1.4.2", ("L3-CES1-07", "L3-CES1-11"), "访问控制", "Access control",
            "无共享或多余账户；依据安全标记控制对重要主体和客体的访问",
            "No shared or surplus accounts; security labels on subjects and objects control access"),
    Control("GB/T 22239-2019 8.1.4.3", ("L3-CES1-12", "L3-CES1-13", "L3-CES1-14", "L3-CES1-15"), "安全审计",
            "Security audit",
            "审计覆盖每个用户与重要安全事件；记录含时间、用户、类型和结果；记录受保护；审计进程不被中断",
            "Auditing covers every user and security event; records carry time, user, type and result; "
            "records are protected; the audit process cannot be interrupted"),
    Control("GB/T 22239-2019 8.1.4.4", ("L3-CES1-18", "L3-CES1-19", "L3-CES1-22"), "入侵防范",
            "Intrusion prevention",
            "关闭不需要的服务和高危端口；限制管理终端；检测入侵并告警",
            "Unneeded services and high-risk ports closed; management access limited; intrusions detected"),
    Control("GB/T 22239-2019 8.1.4.5", ("L3-CES1-23",), "恶意代码防范", "Malicious code prevention",
            "识别并阻断入侵和病毒行为", "Intrusion and virus behaviour identified and blocked"),
    Control("GB/T 22239-2019 8.1.4.6", ("L3-CES1-24",), "可信验证", "Trusted verification",
            "验证系统程序、重要配置和应用；破坏时告警", "System programs, key configuration and applications "
            "verified; breaks alarmed"),
    Control("GB/T 22239-2019 8.1.5.2", (), "安全管理中心 / 审计管理", "Security management centre / audit",
            "集中收集和分析审计记录", "Audit records collected and analysed centrally"),
    Control("网络安全法 第二十一条", (), "网络日志", "Network logs", "网络日志留存不少于六个月",
            "Network logs kept at least six months"),
    Control("保密法 (2010) 第二十四条", (), "保密", "Secrecy",
            "涉密计算机不得接入互联网及其他公共信息网络；不得在非涉密设备上处理涉密信息",
            "No connection of classified computers to the Internet or other public networks; no classified "
            "data on non-classified devices"),
    Control("涉密计算机保密管理", (), "保密", "Secrecy",
            "涉密计算机不得使用无线和蓝牙；只用登记的介质；涉密与非涉密设备不得交叉使用",
            "No wireless or bluetooth on classified computers; registered media only; no cross-use"),
    Control("谁主管谁负责，谁运行谁负责", (), "责任制", "Accountability",
            "每个系统都有主管单位和运行者为其负责", "Every system has a unit in charge and an operator who answer"
            " for it"),
)
CONTROL_NAMES = frozenset(c.name for c in CONTROLS)

# Controls cited here beyond the shared catalogue (CONTROLS.md), each with why. 身份鉴别 is evidenced by the
# login, sudo and account rules (DB-AUTH-*, DB-ACCT-001) and by the configuration assessment (L3-CES1-01..04),
# so reports must group those findings under their own clause rather than under 访问控制.
BEYOND_CATALOGUE: dict[str, str] = {
    "GB/T 22239-2019 8.1.4.1": "login failures, password policy and unique identities (DB-AUTH-*, assess)",
}
