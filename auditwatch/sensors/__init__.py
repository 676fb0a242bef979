"""Sensors: the only stages that touch the kernel. Each turns raw records into ``ExecEvent``s."""
