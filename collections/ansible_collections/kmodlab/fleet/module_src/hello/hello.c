// SPDX-License-Identifier: GPL-2.0
/*
 * hello.c - /proc/hello keeps one short message: root writes it, anyone
 * reads it.
 *
 * - A read before any write returns nothing (end of file at once).
 * - Each write replaces the whole message; a write of 0 bytes changes nothing.
 * - A write longer than HELLO_MSG_MAX bytes fails with EMSGSIZE and leaves
 *   the message as it was (no partial write that a shell would retry).
 * - A reader gets the message as it was when it first read the open file,
 *   in as many pieces as its buffer needs.
 */
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>

#define HELLO_PROC_NAME "hello"
#define HELLO_PROC_MODE 0644
#define HELLO_MSG_MAX 255

static DEFINE_MUTEX(hello_lock);
static char hello_msg[HELLO_MSG_MAX + 1];	/* NUL-terminated, guarded */
static size_t hello_len;			/* guarded by hello_lock */
static struct proc_dir_entry *hello_entry;

static int hello_show(struct seq_file *m, void *v)
{
	if (mutex_lock_interruptible(&hello_lock))
		return -ERESTARTSYS;
	seq_write(m, hello_msg, hello_len);
	mutex_unlock(&hello_lock);
	return 0;
}

static int hello_open(struct inode *inode, struct file *file)
{
	return single_open(file, hello_show, NULL);
}

static ssize_t hello_write(struct file *file, const char __user *buf,
			   size_t count, loff_t *ppos)
{
	char tmp[HELLO_MSG_MAX];

	if (count == 0)
		return 0;
	if (count > HELLO_MSG_MAX)
		return -EMSGSIZE;
	if (copy_from_user(tmp, buf, count))
		return -EFAULT;

	if (mutex_lock_interruptible(&hello_lock))
		return -ERESTARTSYS;
	memcpy(hello_msg, tmp, count);
	hello_msg[count] = '\0';
	hello_len = count;
	mutex_unlock(&hello_lock);

	return count;
}

static const struct proc_ops hello_proc_ops = {
	.proc_open = hello_open,
	.proc_read = seq_read,
	.proc_write = hello_write,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

static int __init hello_init(void)
{
	hello_entry = proc_create(HELLO_PROC_NAME, HELLO_PROC_MODE, NULL,
				  &hello_proc_ops);
	if (!hello_entry)
		return -ENOMEM;
	return 0;
}

static void __exit hello_exit(void)
{
	proc_remove(hello_entry);
}

module_init(hello_init);
module_exit(hello_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab");
MODULE_DESCRIPTION("/proc/hello: a message root writes and anyone reads");
MODULE_VERSION("1.0.0");
