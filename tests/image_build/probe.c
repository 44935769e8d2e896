/* Run inside an image build (a RUN step): tries what the builder must not be
 * able to do and prints one line each. Exits 0 when every one was refused.
 * Built static by tests/image_build.rs (the base image has no libc). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int tried(const char *name, long rc) {
	printf("probe %s: %s\n", name, rc == -1 ? strerror(errno) : "ALLOWED");
	return rc != -1;
}

int main(void) {
	int allowed = 0;
	/* KEYCTL_GET_KEYRING_ID of the session keyring: works for any process
	 * unless seccomp stops it. */
	allowed += tried("keyctl", syscall(SYS_keyctl, 0, -3, 0));
	allowed += tried("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, -3));
	/* BPF_MAP_CREATE with no attributes. */
	allowed += tried("bpf", syscall(SYS_bpf, 0, NULL, 0));
	/* PTRACE_TRACEME: allowed to any process unless seccomp stops it. */
	allowed += tried("ptrace", syscall(SYS_ptrace, 0, 0, 0, 0));
	/* A host path: the container's init's root, bound into the stage. */
	mkdir("/probe-mnt", 0700);
	allowed += tried("mount", mount("/proc/1/root", "/probe-mnt", NULL, MS_BIND, NULL));
	allowed += tried("mount-proc", mount("proc", "/probe-mnt", "proc", 0, NULL));
	allowed += tried("unshare-mount", syscall(SYS_unshare, 0x00020000 /* CLONE_NEWNS */));
	return allowed ? 1 : 0;
}
