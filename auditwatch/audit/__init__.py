"""The audit side of auditwatch, in stages (each pure except where noted).

    records   bytes -> AuditRecord          (audit.log lines, netlink messages)
    grouper   AuditRecord -> AuditEvent     (by timestamp and serial, Laurel style)
    execs     AuditEvent -> ExecEvent       (fast path on SYSCALL, then full decode)
    reader    files/stdin -> ExecEvent      (I/O: offline scan of audit.log)

The live sensor is ``auditwatch.sensors.audit_netlink.AuditNetlinkSource``.
"""
