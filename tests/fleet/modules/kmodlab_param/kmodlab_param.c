// SPDX-License-Identifier: GPL-2.0
/*
 * kmodlab_param.c - a module of kmodlab's tests that takes parameters:
 * /proc/kmodlab_param shows the values it was loaded with.
 *
 * - greeting (a string) and count (a number, 0 to KMODLAB_PARAM_COUNT_MAX)
 *   are given at load (modprobe reads them from /etc/modprobe.d). Their mode
 *   is 0444: /sys/module/kmodlab_param/parameters/ shows them, and nobody
 *   changes them while the module is loaded, so a new value in
 *   /proc/kmodlab_param means the module was loaded again.
 * - A count out of range fails the load with EINVAL: a parameter that makes
 *   a release fail, for the tests of the rollback.
 * - /proc/kmodlab_param reads "greeting: <greeting>\ncount: <count>\n".
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

#define KMODLAB_PARAM_PROC_NAME "kmodlab_param"
#define KMODLAB_PARAM_PROC_MODE 0444
#define KMODLAB_PARAM_COUNT_MAX 1000

/* Read-only once loaded (mode 0444): read without a lock. */
static char *greeting = "hello";
module_param(greeting, charp, 0444);
MODULE_PARM_DESC(greeting, "what /proc/kmodlab_param greets with (default hello)");

static int count = 1;
module_param(count, int, 0444);
MODULE_PARM_DESC(count, "a number /proc/kmodlab_param shows, 0 to 1000 (default 1)");

static struct proc_dir_entry *kmodlab_param_entry;

static int kmodlab_param_show(struct seq_file *m, void *v)
{
	seq_printf(m, "greeting: %s\ncount: %d\n", greeting, count);
	return 0;
}

static int __init kmodlab_param_init(void)
{
	if (count < 0 || count > KMODLAB_PARAM_COUNT_MAX) {
		pr_err("kmodlab_param: count %d is not in 0..%d\n", count,
		       KMODLAB_PARAM_COUNT_MAX);
		return -EINVAL;
	}
	kmodlab_param_entry = proc_create_single(KMODLAB_PARAM_PROC_NAME,
						 KMODLAB_PARAM_PROC_MODE, NULL,
						 kmodlab_param_show);
	if (!kmodlab_param_entry)
		return -ENOMEM;
	return 0;
}

static void __exit kmodlab_param_exit(void)
{
	proc_remove(kmodlab_param_entry);
}

module_init(kmodlab_param_init);
module_exit(kmodlab_param_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab");
MODULE_DESCRIPTION("/proc/kmodlab_param: the parameters it was loaded with");
MODULE_VERSION("1.0.0");
