// SPDX-License-Identifier: GPL-2.0
/*
 * my_timer.c - /proc/timer prints the current time and the time since the
 * previous read.
 *
 * Each open file takes one snapshot, on its first read: a reader that reads
 * one byte at a time gets the same two lines as cat, and the final 0-byte
 * read at EOF is not a new read. The time of the previous read is shared by
 * all readers and guarded by a mutex.
 */
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/time64.h>
#include <linux/timekeeping.h>
#include <linux/uaccess.h>

#define TIMER_PROC_NAME "timer"
#define TIMER_PROC_MODE 0444
#define TIMER_TEXT_LEN 128

struct timer_snapshot {
	size_t len;
	char text[TIMER_TEXT_LEN];
};

static DEFINE_MUTEX(timer_lock);
static struct timespec64 timer_last_read;	/* guarded by timer_lock */
static bool timer_read_before;			/* guarded by timer_lock */
static struct proc_dir_entry *timer_entry;

/* Format "now" and the time since the previous read; caller holds timer_lock. */
static void timer_take_snapshot(struct timer_snapshot *snap)
{
	struct timespec64 now, elapsed;
	const char *sign = "";

	ktime_get_real_ts64(&now);
	snap->len = scnprintf(snap->text, sizeof(snap->text),
			      "current time: %lld.%09ld\n",
			      (long long)now.tv_sec, now.tv_nsec);
	if (timer_read_before) {
		/* The wall clock may have been set back since the last read. */
		if (timespec64_compare(&now, &timer_last_read) < 0) {
			elapsed = timespec64_sub(timer_last_read, now);
			sign = "-";
		} else {
			elapsed = timespec64_sub(now, timer_last_read);
		}
		snap->len += scnprintf(snap->text + snap->len,
				       sizeof(snap->text) - snap->len,
				       "elapsed time: %s%lld.%09ld\n", sign,
				       (long long)elapsed.tv_sec, elapsed.tv_nsec);
	}
	timer_last_read = now;
	timer_read_before = true;
}

static ssize_t timer_read(struct file *file, char __user *buf, size_t count,
			  loff_t *ppos)
{
	struct timer_snapshot *snap;

	if (mutex_lock_interruptible(&timer_lock))
		return -ERESTARTSYS;
	snap = file->private_data;
	if (!snap) {
		snap = kmalloc(sizeof(*snap), GFP_KERNEL);
		if (!snap) {
			mutex_unlock(&timer_lock);
			return -ENOMEM;
		}
		timer_take_snapshot(snap);
		file->private_data = snap;
	}
	mutex_unlock(&timer_lock);

	return simple_read_from_buffer(buf, count, ppos, snap->text, snap->len);
}

static int timer_open(struct inode *inode, struct file *file)
{
	file->private_data = NULL;
	return 0;
}

static int timer_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static const struct proc_ops timer_proc_ops = {
	.proc_open = timer_open,
	.proc_read = timer_read,
	.proc_lseek = default_llseek,
	.proc_release = timer_release,
};

static int __init my_timer_init(void)
{
	timer_entry = proc_create(TIMER_PROC_NAME, TIMER_PROC_MODE, NULL,
				  &timer_proc_ops);
	if (!timer_entry)
		return -ENOMEM;
	return 0;
}

static void __exit my_timer_exit(void)
{
	proc_remove(timer_entry);
}

module_init(my_timer_init);
module_exit(my_timer_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab");
MODULE_DESCRIPTION("/proc/timer: current time and time since the previous read");
MODULE_VERSION("1.0.0");
