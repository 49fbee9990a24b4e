/* LD_PRELOAD library for jackd: its CLOCK_MONOTONIC runs FAKECLOCK_PPM parts
 * per million fast (negative: slow), counted from the first call.
 *
 * jackd's dummy backend paces its cycles by clock_gettime(CLOCK_MONOTONIC)
 * (JackTimedDriver: cycle n starts n periods after an anchor), so a jackd
 * started with this library runs its 16 kHz clock at 16000 * (1 + ppm/1e6)
 * real samples a second: a second, independent audio clock on one machine.
 * Its sleeps stay in real time; the anchor-based schedule absorbs the
 * difference.  Built and used by tools/two_clocks.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static int (*real_gettime)(clockid_t, struct timespec *);
static long double factor = 1.0L;
static long double origin = -1.0L;

int clock_gettime(clockid_t id, struct timespec *ts)
{
    if (!real_gettime) {
        real_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
        const char *ppm = getenv("FAKECLOCK_PPM");
        factor = 1.0L + (ppm ? strtold(ppm, NULL) : 0.0L) * 1e-6L;
    }
    int r = real_gettime(id, ts);
    if (r != 0 || (id != CLOCK_MONOTONIC && id != CLOCK_MONOTONIC_RAW))
        return r;
    long double t = ts->tv_sec + ts->tv_nsec * 1e-9L;
    if (origin < 0)
        origin = t;
    t = origin + (t - origin) * factor;
    ts->tv_sec = (time_t)t;
    ts->tv_nsec = (long)((t - (long double)ts->tv_sec) * 1e9L);
    return 0;
}
