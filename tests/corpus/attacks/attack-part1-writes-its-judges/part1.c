// SPDX-License-Identifier: GPL-2.0
/*
 * An attack on the grader: Part I's program tries to write the traces it is
 * judged by and the script that judges them, and to replace dmesg. It runs
 * unprivileged, so each open fails (and counts as a system call: the check
 * fails, as it must).
 */
#include <fcntl.h>
#include <unistd.h>

int main(void)
{
	static const char * const targets[] = {
		"part1.trace", "empty.trace", "check-traces.sh", "/usr/bin/dmesg",
	};
	unsigned int i;

	for (i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		int fd = open(targets[i], O_WRONLY | O_TRUNC);

		if (fd >= 0) {
			if (write(fd, "exit 0\n", 7) < 0)
				return 1;
			close(fd);
		}
	}
	return 0;
}
