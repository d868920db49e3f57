/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* Trimmed from the kernel's uapi <linux/types.h>: the fixed-width types the
 * programs and the libbpf headers use, and nothing else. */
#pragma once

typedef signed char __s8;
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
typedef signed long long __s64;
typedef unsigned long long __u64;

typedef __u16 __le16;
typedef __u16 __be16;
typedef __u32 __le32;
typedef __u32 __be32;
typedef __u64 __le64;
typedef __u64 __be64;
typedef __u16 __sum16;
typedef __u32 __wsum;

#ifndef __cplusplus
typedef _Bool bool;
#define true 1
#define false 0
#endif
