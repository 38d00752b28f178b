// SPDX-License-Identifier: GPL-2.0
/* empty.c - Part I baseline: a program that does nothing. */
int main(void)
{
	return 0;
}
