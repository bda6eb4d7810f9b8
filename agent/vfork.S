// vfork, interposed (agent/vfork.cc): tells the hit path that a vfork child may run on this
// thread's TLS, then jumps to the real vfork. Assembly because the child returns from vfork on the
// parent's stack: a C wrapper's frame would be popped by the child and found broken by the parent.
// Nothing is kept on the stack across the jump; the real vfork returns straight to our caller.
  .text
  .globl vfork
  .type vfork, @function
vfork:
  .cfi_startproc
  endbr64
  sub $8, %rsp  // the stack aligned to 16 for the call
  .cfi_adjust_cfa_offset 8
  call usprobe_agent_before_vfork  // returns the real vfork's address
  add $8, %rsp
  .cfi_adjust_cfa_offset -8
  jmp *%rax
  .cfi_endproc
  .size vfork, .-vfork

  .section .note.GNU-stack, "", @progbits
