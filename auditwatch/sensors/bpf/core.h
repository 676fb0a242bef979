/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Hand-written CO-RE view of the kernel types exec.bpf.c reads.
 *
 * Only the fields we use, each struct marked preserve_access_index: clang records every access
 * as a CO-RE relocation (field name + type), and libbpf rewrites the offsets against the running
 * kernel's BTF (/sys/kernel/btf/vmlinux) at load time. No field offset here is trusted, so the
 * member order and padding below are irrelevant. Fields that live in anonymous unions/structs in
 * the kernel (inode.i_nlink, dentry.d_name, file.f_path, mm_struct.arg_start) are declared as
 * direct members: libbpf's matcher descends into anonymous members by name.
 *
 * Do not replace this with a generated vmlinux.h and never compile against another kernel's headers.
 */
#ifndef AUDITWATCH_CORE_H
#define AUDITWATCH_CORE_H

#include <linux/types.h>
#include <linux/bpf.h>      /* UAPI only: map types, flags */

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __s32 s32;
typedef __u64 u64;
typedef __s64 s64;
typedef int pid_t;
typedef __u32 dev_t;

#define PAI __attribute__((preserve_access_index))

typedef struct { u32 val; } kuid_t;

struct qstr {
	u32 len;
	const unsigned char *name;
} PAI;

struct super_block {
	dev_t s_dev;
	unsigned long s_magic;
} PAI;

struct inode {
	unsigned long i_ino;
	unsigned int i_nlink;
	struct super_block *i_sb;
} PAI;

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	struct inode *d_inode;
	struct super_block *d_sb;
} PAI;

struct vfsmount {
	struct dentry *mnt_root;
	struct super_block *mnt_sb;
} PAI;

/* fs/mount.h: the vfsmount is embedded in struct mount; we step from one to the other with
 * bpf_core_field_offset(struct mount, mnt), relocated like any other field. */
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} PAI;

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} PAI;

struct file {
	struct path f_path;
	struct inode *f_inode;
} PAI;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} PAI;

struct files_struct {
	struct fdtable *fdt;
} PAI;

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	struct file *exe_file;
} PAI;

struct ns_common {
	unsigned int inum;
} PAI;

struct pid_namespace {
	unsigned int level;
	struct ns_common ns;
} PAI;

struct mnt_namespace {
	struct ns_common ns;
} PAI;

struct upid {
	int nr;
	struct pid_namespace *ns;
} PAI;

struct pid {
	unsigned int level;
	struct upid numbers[1];
} PAI;

struct nsproxy {
	struct mnt_namespace *mnt_ns;
} PAI;

struct cred {
	kuid_t uid;
	kuid_t euid;
} PAI;

struct task_struct {
	pid_t pid;
	pid_t tgid;
	struct task_struct *real_parent;
	struct pid *thread_pid;
	const struct cred *cred;
	struct mm_struct *mm;
	struct files_struct *files;
	struct nsproxy *nsproxy;
	char comm[16];
} PAI;

struct linux_binprm {
	struct file *file;
	const char *filename;
} PAI;

/* x86_64 user registers at syscall entry (what tp_btf/raw_tp sys_enter get). */
struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long r10;
	unsigned long r8;
	unsigned long orig_ax;
} PAI;

#endif /* AUDITWATCH_CORE_H */
