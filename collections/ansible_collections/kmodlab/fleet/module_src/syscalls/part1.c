// SPDX-License-Identifier: GPL-2.0
/*
 * part1.c - Part I: empty.c plus exactly five system calls.
 *
 * Each call goes through syscall(2), one per line: libc wrappers may cache
 * (getpid did in old glibc) or use the vDSO (time, gettimeofday,
 * clock_gettime), which strace never sees, and stdio adds calls of its own.
 */
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
	syscall(SYS_getpid);
	syscall(SYS_getppid);
	syscall(SYS_getuid);
	syscall(SYS_geteuid);
	syscall(SYS_getgid);
	return 0;
}
