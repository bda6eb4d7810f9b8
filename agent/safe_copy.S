/* usprobe_agent_safe_copy: see safe_copy.h. Byte at a time, so that a fault happens on the first
 * unreadable byte and the fixup only has to know about one instruction. */
	.text
	.p2align 4
	.globl usprobe_agent_safe_copy
	.hidden usprobe_agent_safe_copy
	.type usprobe_agent_safe_copy, @function
	.globl usprobe_agent_safe_copy_load
	.hidden usprobe_agent_safe_copy_load
	.globl usprobe_agent_safe_copy_load_end
	.hidden usprobe_agent_safe_copy_load_end
	.globl usprobe_agent_safe_copy_fixup
	.hidden usprobe_agent_safe_copy_fixup

/* %rdi = dst, %rsi = src, %rdx = n; %rax = bytes copied so far, then the result. */
usprobe_agent_safe_copy:
	.cfi_startproc
	xorl	%eax, %eax
	subq	$1, %rdx		/* room for characters, the NUL aside */
	jbe	.Lterminate		/* n <= 1: just the NUL */
.Lloop:
usprobe_agent_safe_copy_load:
	movzbl	(%rsi,%rax), %ecx	/* the only instruction that may fault */
usprobe_agent_safe_copy_load_end:
	testb	%cl, %cl
	jz	.Lterminate
	movb	%cl, (%rdi,%rax)
	addq	$1, %rax
	cmpq	%rdx, %rax
	jb	.Lloop
.Lterminate:
	movb	$0, (%rdi,%rax)
	ret

/* A fault at usprobe_agent_safe_copy_load resumes here, with every register as it was then. */
usprobe_agent_safe_copy_fixup:
	movb	$0, (%rdi)
	movq	$-1, %rax
	ret
	.cfi_endproc
	.size usprobe_agent_safe_copy, . - usprobe_agent_safe_copy

	.section .note.GNU-stack, "", @progbits
