/* stk_bad_fp (stack_targets.h): call fn(x) with %rbp = bad_fp. Described by CFI, so that a DWARF
 * unwinder walks through it; a frame-pointer walk from fn's entry finds the garbage. */
	.text
	.globl	stk_bad_fp
	.type	stk_bad_fp, @function
stk_bad_fp:	/* %rdi = x, %rsi = fn, %rdx = bad_fp */
	.cfi_startproc
	push	%rbp
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %rbp, 0
	mov	%rdx, %rbp
	call	*%rsi
	pop	%rbp
	.cfi_adjust_cfa_offset -8
	.cfi_restore %rbp
	ret
	.cfi_endproc
	.size	stk_bad_fp, .-stk_bad_fp

	.section .note.GNU-stack,"",@progbits
