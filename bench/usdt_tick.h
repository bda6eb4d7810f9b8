/* The benchmarks' USDT probe (usdt_tick.c): usprobe_bench:tick, one site, one argument. */
#ifndef USPROBE_BENCH_USDT_TICK_H
#define USPROBE_BENCH_USDT_TICK_H

#ifdef __cplusplus
extern "C" {
#endif

/* Returns x + 1 after passing the site of usprobe_bench:tick, whose argument 0 is x (-8@%rdi). */
long usdt_tick(long x);
/* The site: the probe's nop, the first byte of usdt_tick (where a kernel uprobe goes). */
extern const char usdt_tick_site[];

#ifdef __cplusplus
}
#endif

#endif
