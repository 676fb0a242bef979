// SPDX-License-Identifier: GPL-2.0
/*
 * auditwatch exec sensor: reports execs whose image (or shebang script) is fileless.
 *
 * Programs (the loader picks one exec program and at most one syscall-entry family by autoload):
 *   exec:    tp_btf/sched_process_exec  ->  raw_tp/sched_process_exec  ->  tracepoint/sched/...
 *   scripts: by default none: at sched_process_exec the script's fd is still open in the new
 *            image (a close-on-exec fd could not be read by the interpreter, so such a script
 *            cannot run) and is resolved from the fd table. Optional, for the syscall-entry view
 *            (it costs every syscall of every task ~80 ns, see bench/):
 *            tracepoint/syscalls/sys_enter_execve(at) -> tp_btf/sys_enter -> raw_tp/sys_enter,
 *            which stash the fd's file per thread in an LRU hash, consumed at exec.
 * Classic tracepoints need tracefs mounted; tp_btf/raw_tp do not.
 *
 * In-kernel filter (only these are sent): the image has nlink 0; its dentry is memfd:*; its path
 * (dentry walk across mounts, up to the task's mount-namespace root) is /dev/shm/... or
 * /run/shm/...; or the exec went through an fd path (/dev/fd/N, /proc/self/fd/N, execveat
 * AT_EMPTY_PATH) to a file that is not the image (a shebang script) and that file has nlink 0 or
 * is a memfd. The shm test is by path, not by a superblock learned in user space, so a
 * container's own /dev/shm (another tmpfs) is recognised as Tracee does (path prefix).
 * Loader: when the image's dentry name is a dynamic loader's (ld-*.so*, ld.so*: one 8-byte name
 * read decides for every other exec), the program ld.so will map is the first argv string after
 * argv[0] and the loader's options; when it is an fd path whose file has nlink 0 or is a memfd,
 * the record carries it as the fd target (R_LOADER, script_* fields, script_argi its argv index).
 *
 * Parent: for a record that is sent (never for the filtered-out majority), the parent's image at
 * exec time, as the kernel resolves it: real_parent->mm->exe_file (NULL mm: a kernel thread, or
 * a parent past exit_mm), walked like the image (parent_path, parent_* fields, parent_flags).
 * Read here rather than from /proc/PPID/exe later: a parent that execs another image right after
 * its child's exec cannot pass for that image.
 *
 * The event layout is mirrored by abi.py (ctypes); tests compare both with this object's BTF.
 * Timestamps are bpf_ktime_get_boot_ns() (CLOCK_BOOTTIME); user space adds wall - boottime.
 */
#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#ifndef offsetof
#define offsetof(t, m) __builtin_offsetof(t, m)
#endif

char LICENSE[] SEC("license") = "GPL";

#define COMM_LEN 16
#define NAME_BUF 256            /* one dentry name (NAME_MAX 255 + NUL) */
#define FILENAME_BUF 256        /* bprm->filename, truncated */
#define PATH_LOGICAL 512        /* path components stop once this much is used */
#define PATH_BUF (PATH_LOGICAL + NAME_BUF)
#define ARGV_BUF 4096
#define MAX_DEPTH 24            /* dentries walked (mount crossings included) */
#define FDPATH_BUF 64
#define LOADER_MAX_ARGS 12      /* argv strings looked at for the loader's program (argv[0] incl.) */
#define LOADER_STEPS (ARGV_BUF / (FDPATH_BUF - 1) + LOADER_MAX_ARGS + 2)

#define TMPFS_MAGIC 0x01021994
#define AT_EMPTY_PATH 0x1000
#define NR_EXECVE 59
#define NR_EXECVEAT 322

/* reasons: why the kernel sent the event */
#define R_NLINK0 1
#define R_MEMFD 2
#define R_SHM 4
#define R_SCRIPT 8
#define R_LOADER 16             /* ld.so runs a program named by an fd path: the script_* fields */

/* flags */
#define F_ARGV_TRUNC 1
#define F_PATH_TRUNC 2          /* the walk hit MAX_DEPTH or PATH_LOGICAL */
#define F_PATH_DETACHED 4       /* stopped at a dentry that is its own root (memfd, pipe...) */
#define F_SCRIPT_MEMFD 8

/* parent_flags: F_PATH_TRUNC and F_PATH_DETACHED of the parent's walk, and */
#define PF_KNOWN 1              /* the parent's exe_file was read: parent_* fields are valid */

enum counter { C_EXECS = 0, C_EMITTED = 1, C_DROPS = 2, C_STASHED = 3, C_MAX = 4 };

struct aw_exec_event {
	u64 boot_ns;
	u64 cgroup_id;
	u64 ino;
	u64 sb_magic;
	u64 script_ino;
	u64 script_sb_magic;
	u64 parent_ino;         /* the parent's image (real_parent->mm->exe_file) at exec time */
	u32 tgid;
	u32 pid;
	u32 old_pid;
	u32 ppid;
	u32 uid;
	u32 euid;
	u32 ns_pid;
	u32 ns_ppid;
	u32 pid_ns;
	u32 mnt_ns;
	u32 dev;
	u32 nlink;
	u32 script_dev;
	u32 script_nlink;
	s32 script_fd;
	u32 reasons;
	u32 flags;
	u32 pad0;
	u32 parent_dev;
	u32 parent_nlink;
	u32 parent_flags;
	u16 path_len;           /* bytes of path[] used: NUL-terminated names, leaf first */
	u16 depth;              /* number of names in path[] */
	u16 argv_len;           /* bytes of argv[] sent (the record ends there) */
	u16 script_argi;        /* R_LOADER: index of the argv string naming the fd target */
	u16 parent_path_len;    /* as path_len/depth, for parent_path[] */
	u16 parent_depth;
	char comm[COMM_LEN];
	char filename[FILENAME_BUF];
	char script_name[NAME_BUF];
	char path[PATH_BUF];
	char parent_path[PATH_BUF];
	char argv[ARGV_BUF];
};

/* What sys_enter_execve(at) learned about the file behind an fd path, per thread. */
struct aw_fd_stash {
	u64 ino;
	u64 sb_magic;
	u32 dev;
	u32 nlink;
	s32 fd;
	u32 memfd;
	char name[NAME_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, u32);
	__type(value, u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct aw_exec_event);
} event_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct aw_fd_stash);
} stash_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);       /* thread id at syscall entry == old_pid at sched_process_exec */
	__type(value, struct aw_fd_stash);
} fd_stash SEC(".maps");

static __always_inline void count(u32 which)
{
	u64 *v = bpf_map_lookup_elem(&counters, &which);

	if (v)
		*v += 1;
}

static __always_inline int is_memfd_name(const unsigned char *name)
{
	char p[6] = {};

	if (bpf_probe_read_kernel(p, sizeof(p), name))
		return 0;
	return p[0] == 'm' && p[1] == 'e' && p[2] == 'm' && p[3] == 'f' && p[4] == 'd' &&
	       p[5] == ':';
}

#define K_MEMFD 1
#define K_LOADER 2              /* "ld-" or "ld.so" prefix: is_loader_name() decides */

/* The image's dentry name, first 8 bytes: memfd:... or possibly a dynamic loader. */
static __always_inline u32 image_name_kind(const unsigned char *name)
{
	char p[8] = {};

	if (bpf_probe_read_kernel(p, sizeof(p), name))
		return 0;
	if (p[0] == 'm' && p[1] == 'e' && p[2] == 'm' && p[3] == 'f' && p[4] == 'd' && p[5] == ':')
		return K_MEMFD;
	if (p[0] == 'l' && p[1] == 'd' &&
	    (p[2] == '-' || (p[2] == '.' && p[3] == 's' && p[4] == 'o')))
		return K_LOADER;
	return 0;
}

/* trc105.is_loader on a dentry name with an "ld-"/"ld.so" prefix: ld.so*, or ld-*.so* (which
 * covers ld-linux*.so* and ld-musl-*.so*). Names past 63 bytes are judged on their start. */
static __always_inline int is_loader_name(const unsigned char *name)
{
	char n[FDPATH_BUF] = {};

	if (bpf_probe_read_kernel_str(n, sizeof(n), name) <= 0)
		return 0;
	if (n[2] == '.')
		return 1;       /* ld.so* */
	for (int i = 3; i < FDPATH_BUF - 3; i++) {
		if (n[i] == 0)
			return 0;
		if (n[i] == '.' && n[i + 1] == 's' && n[i + 2] == 'o')
			return 1;
	}
	return 0;
}

static __always_inline int is_name(const char *buf, u32 off, char a, char b, char c)
{
	off &= PATH_LOGICAL - 1;
	return buf[off] == a && buf[off + 1] == b && buf[off + 2] == c && buf[off + 3] == 0;
}

/* ---- fd paths: /dev/fd/N, /proc/self/fd/N ... ------------------------------------------ */

static __always_inline int digits(const char *s, u32 i, u32 *out)
{
	u32 v = 0, n = 0;

	for (int k = 0; k < 10; k++) {
		char c = s[(i + k) & (FDPATH_BUF - 1)];

		if (c < '0' || c > '9')
			break;
		v = v * 10 + (c - '0');
		n++;
	}
	*out = v;
	return n;
}

static __always_inline int prefix(const char *s, const char *p, u32 n)
{
	for (u32 k = 0; k < n && k < 24; k++)
		if (s[k] != p[k])
			return 0;
	return 1;
}

/* "/dev/fd/N", "/proc/self/fd/N", "/proc/thread-self/fd/N", "/proc/<own tgid>/fd/N" -> N */
static __always_inline int parse_fd_path(const char *s, u32 tgid, u32 tid)
{
	u32 i, v, n;

	if (prefix(s, "/dev/fd/", 8)) {
		i = 8;
	} else if (prefix(s, "/proc/", 6)) {
		if (prefix(s + 6, "self/fd/", 8)) {
			i = 14;
		} else if (prefix(s + 6, "thread-self/fd/", 15)) {
			i = 21;
		} else {
			n = digits(s, 6, &v);
			if (!n || (v != tgid && v != tid))
				return -1;
			i = 6 + n;
			if (!prefix(s + (i & 31), "/fd/", 4))
				return -1;
			i += 4;
		}
	} else {
		return -1;
	}
	n = digits(s, i, &v);
	if (!n || s[(i + n) & (FDPATH_BUF - 1)] != 0)
		return -1;
	return v;
}

/* The struct file behind fd in the current task's table, or NULL. */
static __always_inline struct file *fd_file(int fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;

	if (fd < 0 || (u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]))
		return NULL;
	return file;
}

struct walk {
	char *buf;              /* PATH_BUF bytes in the event: path[] or parent_path[] */
	struct dentry *d;
	struct mount *mnt;
	struct vfsmount *vmnt;
	u32 off;
	u32 top;
	u32 second;
	u32 depth;
	u32 done;
	u32 flags;              /* F_PATH_DETACHED, F_PATH_TRUNC */
};

/* One step of the dentry walk (a bpf_loop callback: verified once, not per iteration). */
static long walk_step(u64 index, struct walk *w)
{
	/* locals only: a BPF_CORE_READ(w->x, ...) would record struct walk as a CO-RE access */
	char *buf = w->buf;
	struct dentry *d = w->d;
	struct mount *mnt = w->mnt;
	struct vfsmount *vmnt = w->vmnt;
	struct dentry *root = BPF_CORE_READ(vmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	long n;

	if (d == root) {
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (up == mnt || !up) {
			w->done = 1;    /* the namespace's root */
			return 1;
		}
		w->d = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		w->vmnt = (void *)up + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	if (w->off >= PATH_LOGICAL)
		return 1;
	n = bpf_probe_read_kernel_str(&buf[w->off & (PATH_LOGICAL - 1)], NAME_BUF,
				      BPF_CORE_READ(d, d_name.name));
	if (n <= 0)
		return 1;
	w->second = w->top;
	w->top = w->off;
	w->off += n;
	w->depth++;
	if (d == parent) {      /* its own root, not the mount's: memfd, anon files */
		w->flags |= F_PATH_DETACHED;
		w->done = 1;
		return 1;
	}
	w->d = parent;
	return 0;
}

/* Fill buf (PATH_BUF bytes) with the names from the file's dentry up to its mount-namespace
 * root, crossing mounts as d_path does: NUL-terminated, leaf first. w->off is the bytes used,
 * w->depth the names, w->flags F_PATH_DETACHED / F_PATH_TRUNC. */
static __always_inline void walk_file(struct walk *w, struct file *file, char *buf)
{
	w->buf = buf;
	w->d = BPF_CORE_READ(file, f_path.dentry);
	w->vmnt = BPF_CORE_READ(file, f_path.mnt);
	w->mnt = (void *)w->vmnt - bpf_core_field_offset(struct mount, mnt);
	bpf_loop(MAX_DEPTH, walk_step, w, 0);
	if (!w->done)
		w->flags |= F_PATH_TRUNC;
	if (w->off > PATH_BUF)
		w->off = PATH_BUF;
}

/* The image's path into e->path. Returns R_SHM when it is /dev/shm/... or /run/shm/... */
static __always_inline u32 walk_path(struct aw_exec_event *e, struct file *file)
{
	struct walk w = {};

	walk_file(&w, file, e->path);
	e->flags |= w.flags;
	e->path_len = w.off;
	e->depth = w.depth;
	if (w.done && !(w.flags & F_PATH_DETACHED) && w.depth >= 3 &&
	    is_name(e->path, w.second, 's', 'h', 'm') &&
	    (is_name(e->path, w.top, 'd', 'e', 'v') || is_name(e->path, w.top, 'r', 'u', 'n')))
		return R_SHM;
	return 0;
}

/* The parent's image at exec time (real_parent->mm->exe_file), for a record that is sent.
 * real_parent is RCU-protected: the program runs inside the tracepoint's RCU read section and
 * every pointer is read with bpf_probe_read_kernel (CO-RE), which faults to 0, never oopses. */
static __always_inline void parent_exe(struct aw_exec_event *e, struct task_struct *task)
{
	struct mm_struct *mm = BPF_CORE_READ(task, real_parent, mm);
	struct file *file = NULL;
	struct inode *inode;
	struct walk w = {};

	e->parent_flags = 0;
	e->parent_ino = 0;
	e->parent_dev = 0;
	e->parent_nlink = 0;
	e->parent_path_len = 0;
	e->parent_depth = 0;
	if (mm)         /* NULL: a kernel thread, or a parent past exit_mm */
		file = BPF_CORE_READ(mm, exe_file);
	if (!file)
		return;
	inode = BPF_CORE_READ(file, f_inode);
	e->parent_ino = BPF_CORE_READ(inode, i_ino);
	e->parent_dev = BPF_CORE_READ(inode, i_sb, s_dev);
	e->parent_nlink = BPF_CORE_READ(inode, i_nlink);
	walk_file(&w, file, e->parent_path);
	e->parent_path_len = w.off;
	e->parent_depth = w.depth;
	e->parent_flags = PF_KNOWN | w.flags;
}

static __always_inline u32 ns_nr(struct pid *pid, u32 level)
{
	if (!pid || level > 31)
		return 0;
	if (BPF_CORE_READ(pid, level) < level)
		return 0;
	return BPF_CORE_READ(pid, numbers[level].nr);
}

static __always_inline void fill_task(struct aw_exec_event *e, struct task_struct *task)
{
	struct task_struct *parent = BPF_CORE_READ(task, real_parent);
	struct pid *tpid = BPF_CORE_READ(task, thread_pid);
	u32 level = BPF_CORE_READ(tpid, level);
	struct pid_namespace *pns;

	e->tgid = BPF_CORE_READ(task, tgid);
	e->pid = BPF_CORE_READ(task, pid);
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->uid = BPF_CORE_READ(task, cred, uid.val);
	e->euid = BPF_CORE_READ(task, cred, euid.val);
	e->ns_pid = ns_nr(tpid, level);
	e->ns_ppid = ns_nr(BPF_CORE_READ(parent, thread_pid), level);
	if (level <= 31) {
		pns = BPF_CORE_READ(tpid, numbers[level].ns);
		e->pid_ns = BPF_CORE_READ(pns, ns.inum);
	}
	e->mnt_ns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

static __always_inline void read_argv(struct aw_exec_event *e, struct task_struct *task)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	u64 len = end > start ? end - start : 0;

	if (len > ARGV_BUF) {
		len = ARGV_BUF;
		e->flags |= F_ARGV_TRUNC;
	}
	len &= (2 * ARGV_BUF - 1);
	if (len > ARGV_BUF)
		len = ARGV_BUF;
	if (len && bpf_probe_read_user(e->argv, len, (void *)start))
		len = 0;
	e->argv_len = len;
}

/* The file behind an fd path s (FDPATH_BUF bytes, NUL-terminated) in the new image's fd table:
 * when it is not the image and has nlink 0 or is a memfd, fill the script_* fields and return 1.
 * Shared by shebang scripts (s is bprm->filename) and the loader (s is its program argument). */
static __always_inline int fd_target_from_path(struct aw_exec_event *e, const char *s)
{
	u64 id = bpf_get_current_pid_tgid();
	struct file *file;
	struct inode *inode;
	const unsigned char *name;
	int fd;

	if (s[0] != '/' || (s[1] != 'd' && s[1] != 'p'))
		return 0;
	fd = parse_fd_path(s, id >> 32, (u32)id);
	if (fd < 0)
		return 0;
	file = fd_file(fd);
	if (!file)
		return 0;
	inode = BPF_CORE_READ(file, f_inode);
	e->script_ino = BPF_CORE_READ(inode, i_ino);
	e->script_dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (e->script_ino == e->ino && e->script_dev == e->dev)
		return 0;       /* the image itself */
	name = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	e->script_nlink = BPF_CORE_READ(inode, i_nlink);
	if (is_memfd_name(name))
		e->flags |= F_SCRIPT_MEMFD;
	else if (e->script_nlink != 0)
		return 0;
	e->script_sb_magic = BPF_CORE_READ(inode, i_sb, s_magic);
	e->script_fd = fd;
	bpf_probe_read_kernel_str(e->script_name, sizeof(e->script_name), name);
	return 1;
}

/* A shebang script run through an fd path: the fd is still open in the new image (a script
 * whose fd was close-on-exec cannot be read by its interpreter, so it cannot run). When the fd's
 * file is not the image (the interpreter) and has nlink 0 or is a memfd, it is the script. */
static __always_inline u32 script_from_fdtable(struct aw_exec_event *e, const char *filename)
{
	char s[FDPATH_BUF] = {};

	if (bpf_probe_read_kernel_str(s, sizeof(s), filename) <= 0)
		return 0;
	return fd_target_from_path(e, s) ? R_SCRIPT : 0;
}

/* "--opt" of glibc's / musl's ld.so: 1 takes no value, 2 takes the next argv string as value,
 * 0 anything else (--help, --version, --list-tunables, an unknown option: ld.so runs nothing). */
#define OPT(lit) (sizeof(lit) <= FDPATH_BUF && prefix(s, lit, sizeof(lit)))
static __always_inline u32 loader_option(const char *s)
{
	switch (s[2]) {
	case 'l':
		if (OPT("--list"))
			return 1;
		if (OPT("--library-path"))
			return 2;
		return 0;
	case 'v':
		return OPT("--verify");
	case 'i':
		if (OPT("--inhibit-cache"))
			return 1;
		return OPT("--inhibit-rpath") ? 2 : 0;
	case 'p':
		return OPT("--preload") ? 2 : 0;
	case 'a':
		return OPT("--argv0") || OPT("--audit") ? 2 : 0;
	case 'g':
		return OPT("--glibc-hwcaps-prepend") || OPT("--glibc-hwcaps-mask") ? 2 : 0;
	}
	return 0;
}
#undef OPT

struct argscan {
	struct aw_exec_event *e;
	u32 off;                /* next byte of e->argv to read */
	u32 argi;               /* index of the argv string at off */
	u32 skip;               /* option values still to pass over */
	u32 mid;                /* off is inside a long string, not at its start */
	u32 found;              /* R_LOADER once the program's fd target qualified */
};

/* One step of the loader's argv scan: one chunk of up to FDPATH_BUF - 1 bytes of one string. */
static long argscan_step(u64 index, struct argscan *a)
{
	struct aw_exec_event *e = a->e;
	char s[FDPATH_BUF] = {};
	u32 off = a->off, len = e->argv_len;
	long n;

	if (off >= len || off >= ARGV_BUF)
		return 1;
	n = bpf_probe_read_kernel_str(s, sizeof(s), &e->argv[off & (ARGV_BUF - 1)]);
	if (n <= 0 || off + n > len)
		return 1;       /* runs past the argv copied (truncated, or stale scratch bytes) */
	if (!a->mid && a->argi > 0) {
		if (a->skip) {
			a->skip--;
		} else if (s[0] == '-' && s[1] == '-') {
			u32 k = loader_option(s);

			if (!k)
				return 1;
			a->skip = k - 1;
		} else {
			/* the program: a whole string (fd paths are short) */
			if (n < FDPATH_BUF && fd_target_from_path(e, s)) {
				e->script_argi = a->argi;
				a->found = R_LOADER;
			}
			return 1;
		}
	}
	if (n < FDPATH_BUF) {   /* the string ended in this chunk */
		a->off = off + n;
		a->mid = 0;
		if (++a->argi >= LOADER_MAX_ARGS)
			return 1;
	} else {
		a->off = off + FDPATH_BUF - 1;
		a->mid = 1;
	}
	return 0;
}

/* ld.so [OPTIONS] PROGRAM ARGS: PROGRAM's fd target, from the argv already in e. */
static __always_inline u32 loader_from_argv(struct aw_exec_event *e)
{
	struct argscan a = {};

	a.e = e;
	bpf_loop(LOADER_STEPS, argscan_step, &a, 0);
	return a.found;
}

/* The common body: file is the image being run (bprm->file), filename is bprm->filename. */
static __always_inline int on_exec(struct file *file, const char *filename, u32 old_pid)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct aw_fd_stash *st;
	struct aw_exec_event *e;
	struct inode *inode;
	u32 zero = 0, reasons = 0, kind, have_argv = 0;

	count(C_EXECS);
	e = bpf_map_lookup_elem(&event_scratch, &zero);
	if (!e)
		return 0;
	inode = BPF_CORE_READ(file, f_inode);
	e->flags = 0;
	e->ino = BPF_CORE_READ(inode, i_ino);
	e->nlink = BPF_CORE_READ(inode, i_nlink);
	e->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	e->sb_magic = BPF_CORE_READ(inode, i_sb, s_magic);
	if (e->nlink == 0)
		reasons |= R_NLINK0;
	const unsigned char *name = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	kind = image_name_kind(name);
	if (kind == K_MEMFD)
		reasons |= R_MEMFD;
	e->script_argi = 0;

	st = bpf_map_lookup_elem(&fd_stash, &old_pid);
	if (st) {
		if (st->ino != e->ino || st->dev != e->dev) {
			reasons |= R_SCRIPT;
			e->script_ino = st->ino;
			e->script_sb_magic = st->sb_magic;
			e->script_dev = st->dev;
			e->script_nlink = st->nlink;
			e->script_fd = st->fd;
			if (st->memfd)
				e->flags |= F_SCRIPT_MEMFD;
			bpf_probe_read_kernel_str(e->script_name, sizeof(e->script_name), st->name);
		}
		bpf_map_delete_elem(&fd_stash, &old_pid);
	} else {
		reasons |= script_from_fdtable(e, filename);
	}
	if (kind == K_LOADER && !(reasons & R_SCRIPT) && is_loader_name(name)) {
		read_argv(e, task);
		have_argv = 1;
		reasons |= loader_from_argv(e);
	}
	if (!(reasons & (R_SCRIPT | R_LOADER))) {
		e->script_ino = 0;
		e->script_sb_magic = 0;
		e->script_dev = 0;
		e->script_nlink = 0;
		e->script_fd = -1;
		e->script_name[0] = 0;
	}

	e->path[0] = 0;
	reasons |= walk_path(e, file);
	if (!reasons)
		return 0;

	e->reasons = reasons;
	e->boot_ns = bpf_ktime_get_boot_ns();
	e->old_pid = old_pid;
	e->pad0 = 0;
	fill_task(e, task);
	parent_exe(e, task);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename);
	if (!have_argv)
		read_argv(e, task);

	u64 size = offsetof(struct aw_exec_event, argv) + (e->argv_len & (2 * ARGV_BUF - 1));
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (bpf_ringbuf_output(&events, e, size, 0))
		count(C_DROPS);
	else
		count(C_EMITTED);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(aw_exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec(BPF_CORE_READ(bprm, file), BPF_CORE_READ(bprm, filename), old_pid);
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(aw_exec_raw, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec(BPF_CORE_READ(bprm, file), BPF_CORE_READ(bprm, filename), old_pid);
}

/* tracefs format of sched/sched_process_exec (stable ABI of the classic tracepoint). */
struct tp_sched_process_exec {
	u64 common;
	u32 filename_loc;       /* __data_loc: offset in the low 16 bits */
	s32 pid;
	s32 old_pid;
};

SEC("tracepoint/sched/sched_process_exec")
int aw_exec_tp(struct tp_sched_process_exec *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct file *file = BPF_CORE_READ(task, mm, exe_file);   /* == bprm->file by now */
	const char *filename = (const char *)ctx + (ctx->filename_loc & 0xffff);

	return on_exec(file, filename, ctx->old_pid);
}

/* ---- syscall entry: remember the file behind an fd path, per thread ---------------------- */

static __always_inline void stash_fd(int fd)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct file *file = fd_file(fd);
	u32 zero = 0;
	struct aw_fd_stash *st;
	struct inode *inode;
	const unsigned char *name;

	if (!file)
		goto forget;
	st = bpf_map_lookup_elem(&stash_scratch, &zero);
	if (!st)
		goto forget;
	inode = BPF_CORE_READ(file, f_inode);
	name = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	st->nlink = BPF_CORE_READ(inode, i_nlink);
	st->memfd = is_memfd_name(name);
	if (st->nlink != 0 && !st->memfd)
		goto forget;
	st->ino = BPF_CORE_READ(inode, i_ino);
	st->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	st->sb_magic = BPF_CORE_READ(inode, i_sb, s_magic);
	st->fd = fd;
	bpf_probe_read_kernel_str(st->name, sizeof(st->name), name);
	bpf_map_update_elem(&fd_stash, &tid, st, BPF_ANY);
	count(C_STASHED);
	return;
forget:
	bpf_map_delete_elem(&fd_stash, &tid);
}

static __always_inline int on_execve(int dfd, const char *upath, u64 flags)
{
	char s[FDPATH_BUF] = {};
	u64 id = bpf_get_current_pid_tgid();
	int fd;

	if (bpf_probe_read_user_str(s, sizeof(s), upath) < 0)
		s[0] = 0;
	if (s[0] == 0 && (flags & AT_EMPTY_PATH))
		fd = dfd;
	else
		fd = parse_fd_path(s, id >> 32, (u32)id);
	if (fd < 0) {
		u32 tid = (u32)id;

		bpf_map_delete_elem(&fd_stash, &tid);
		return 0;
	}
	stash_fd(fd);
	return 0;
}

/* tracefs formats of syscalls/sys_enter_execve(at): args are 8-byte slots from offset 16. */
struct tp_sys_enter {
	u64 common;
	s32 nr;
	u32 pad;
	u64 args[6];
};

SEC("tracepoint/syscalls/sys_enter_execve")
int aw_execve_tp(struct tp_sys_enter *ctx)
{
	return on_execve(-1, (const char *)ctx->args[0], 0);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int aw_execveat_tp(struct tp_sys_enter *ctx)
{
	return on_execve((int)ctx->args[0], (const char *)ctx->args[1], ctx->args[4]);
}

static __always_inline int on_sys_enter(struct pt_regs *regs, long id)
{
	if (id == NR_EXECVE)
		return on_execve(-1, (const char *)BPF_CORE_READ(regs, di), 0);
	if (id == NR_EXECVEAT)
		return on_execve((int)BPF_CORE_READ(regs, di), (const char *)BPF_CORE_READ(regs, si),
				 BPF_CORE_READ(regs, r8));
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(aw_sys_enter_btf, struct pt_regs *regs, long id)
{
	return on_sys_enter(regs, id);
}

SEC("raw_tp/sys_enter")
int BPF_PROG(aw_sys_enter_raw, struct pt_regs *regs, long id)
{
	return on_sys_enter(regs, id);
}
