/*
 * A fake libnvidia-ml.so.1 for tests: the real NVML ABI (the symbols and
 * structs that pynvml 13 looks up), answering from environment variables and
 * an optional state file instead of a GPU.  Build with tests/fake_nvml/build.sh
 * and point LD_LIBRARY_PATH at build/fake-nvml.
 *
 * Values (all read at call time; "<i>" is the GPU index):
 *   FAKE_NVML_GPUS                 number of GPUs (default 1, at most 64)
 *   FAKE_NVML_INIT_ERROR           nvmlInit* returns this code (9 = driver not loaded)
 *   FAKE_NVML_LOST_GPU             comma list of indexes whose queries return 15 (GPU is lost)
 *   FAKE_NVML_DRIVER_VERSION       default "999.99-fake"
 *   FAKE_NVML_NAME[_<i>]           default "NVIDIA H100 80GB HBM3"
 *   FAKE_NVML_UUID[_<i>]           default "GPU-fake-0000-0000-0000-<i as 12 digits>"
 *   FAKE_NVML_PCI_BUS[_<i>]        PCI bus number in hex (default 18, 2A, 3A, 5D, 9A, AB, BA, DB, ...)
 *   FAKE_NVML_UTIL[_<i>]           GPU utilization percent (default 0)
 *   FAKE_NVML_MEM_UTIL[_<i>]       memory controller utilization percent (default 0)
 *   FAKE_NVML_MEM_TOTAL_MIB[_<i>]  default 81559
 *   FAKE_NVML_MEM_USED_MIB[_<i>]   default: the sum of the GPU's processes
 *   FAKE_NVML_MEM_RESERVED_MIB[_<i>]  driver-reserved memory (default 0).  As in
 *                                  NVML, v1 memory info counts it in "used", v2
 *                                  reports it apart ("reserved")
 *   FAKE_NVML_MEM_V2[_<i>]         "err:25" makes nvmlDeviceGetMemoryInfo_v2 fail
 *                                  as on drivers before R510
 *   FAKE_NVML_POWER_MW[_<i>]       power draw in milliwatts (default 70000)
 *   FAKE_NVML_TEMP_C[_<i>]         GPU temperature (default 35)
 *   FAKE_NVML_SM_CLOCK_MHZ[_<i>]   SM / graphics clock (default 1980)
 *   FAKE_NVML_MEM_CLOCK_MHZ[_<i>]  memory clock (default 2619)
 *   FAKE_NVML_PROCS[_<i>]          compute processes "pid:usedMiB,pid:usedMiB"
 *   FAKE_NVML_ENERGY_MJ[_<i>]      total energy since the driver loaded, millijoules (default 3600000)
 *   FAKE_NVML_CLOCKS_EVENT_REASONS[_<i>]  clocks event (throttle) reason bit mask (default 0)
 *   FAKE_NVML_CLOCKS_EVENT_API     "throttle": only the old nvmlDeviceGetCurrentClocksThrottleReasons
 *                                  answers (drivers before R535); the new name is Not Supported
 *   FAKE_NVML_ECC_CORRECTED[_<i>]  volatile (and aggregate) corrected ECC errors (default 0)
 *   FAKE_NVML_ECC_UNCORRECTED[_<i>] uncorrected ones (default 0)
 *   FAKE_NVML_XID[_<i>]            XID errors that happened on the GPU, in order ("79,31"): each one
 *                                  is delivered once, as an nvmlEventTypeXidCriticalError event, to
 *                                  an event set the GPU is registered with; append to raise more.
 *                                  "ns": the GPU does not support XID events
 * Any numeric value may instead be "ns" (the query returns 3, Not Supported)
 * or "err:<code>" (the query returns <code>).
 *
 * FAKE_NVML_STATE_FILE=<path> names a file of KEY=VALUE lines, re-read on
 * every lookup, whose keys take precedence over the environment's.  The
 * per-index key (FOO_1) is looked up first, in the file and then in the
 * environment, then the plain key (FOO), so a long-running process can see
 * its fake GPUs change.  Write the file atomically (rename) in tests.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 64
#define MAX_PROCS 64
#define VALUE_LEN 512

/* Layouts as in nvml.h and pynvml's ctypes mirrors. */
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
/* pynvml: c_nvmlProcessInfo_v3_t = c_nvmlProcessInfo_v2_t */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

typedef struct fake_dev { unsigned int index; } *nvmlDevice_t;
static struct fake_dev devs[MAX_GPUS];
static int init_count = 0;

/* pynvml: c_nvmlEventData_t */
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;
#define XID_EVENT 0x8ULL /* nvmlEventTypeXidCriticalError */
typedef struct fake_event_set {
    unsigned long long types[MAX_GPUS]; /* registered event types per GPU */
    int delivered[MAX_GPUS];            /* XIDs of FAKE_NVML_XID_<i> delivered so far */
} *nvmlEventSet_t;
static struct fake_event_set event_sets[4];
static int event_sets_used[4];

/* ---- lookups: state file over environment, per-index over plain ---- */

static int file_lookup(const char *key, char *out, size_t n) {
    const char *path = getenv("FAKE_NVML_STATE_FILE");
    if (!path || !*path) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[VALUE_LEN + 128];
    size_t klen = strlen(key);
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (*s == '#' || strncmp(s, key, klen) != 0 || s[klen] != '=') continue;
        char *v = s + klen + 1;
        v[strcspn(v, "\r\n")] = 0;
        snprintf(out, n, "%s", v);
        found = 1; /* the last assignment wins, like a shell */
    }
    fclose(f);
    return found;
}

static int lookup_key(const char *key, char *out, size_t n) {
    if (file_lookup(key, out, n)) return 1;
    const char *v = getenv(key);
    if (!v) return 0;
    snprintf(out, n, "%s", v);
    return 1;
}

/* FAKE_NVML_<name>_<idx> (when idx >= 0), else FAKE_NVML_<name>. */
static int value(const char *name, int idx, char *out, size_t n) {
    char key[128];
    if (idx >= 0) {
        snprintf(key, sizeof key, "FAKE_NVML_%s_%d", name, idx);
        if (lookup_key(key, out, n)) return 1;
    }
    snprintf(key, sizeof key, "FAKE_NVML_%s", name);
    return lookup_key(key, out, n);
}

/* A numeric value: returns NVML_SUCCESS and sets *v, or the injected error. */
static nvmlReturn_t number(const char *name, int idx, unsigned long long dflt, unsigned long long *v) {
    char s[VALUE_LEN];
    if (!value(name, idx, s, sizeof s) || !*s) { *v = dflt; return NVML_SUCCESS; }
    if (strcmp(s, "ns") == 0) return NVML_ERROR_NOT_SUPPORTED;
    if (strncmp(s, "err:", 4) == 0) return (nvmlReturn_t)atoi(s + 4);
    *v = strtoull(s, NULL, 0);
    return NVML_SUCCESS;
}

static int global_int(const char *name, int dflt) {
    char s[VALUE_LEN];
    if (!value(name, -1, s, sizeof s) || !*s) return dflt;
    return atoi(s);
}

static int ngpus(void) {
    int n = global_int("GPUS", 1);
    return n < 0 ? 0 : n > MAX_GPUS ? MAX_GPUS : n;
}

static int is_lost(unsigned int index) {
    char s[VALUE_LEN];
    if (!value("LOST_GPU", -1, s, sizeof s)) return 0;
    for (char *tok = strtok(s, ", "); tok; tok = strtok(NULL, ", "))
        if (*tok && (unsigned)atoi(tok) == index) return 1;
    return 0;
}

/* Common checks of every per-device query. */
static nvmlReturn_t check(nvmlDevice_t h, const void *out) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!h || !out || h < devs || h >= devs + MAX_GPUS) return NVML_ERROR_INVALID_ARGUMENT;
    if (h->index >= (unsigned)ngpus() || is_lost(h->index)) return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(const char *s, char *buf, unsigned int n) {
    if (strlen(s) + 1 > n) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, strlen(s) + 1);
    return NVML_SUCCESS;
}

static unsigned int pci_bus(unsigned int i) {
    static const unsigned int h100[8] = {0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB};
    return i < 8 ? h100[i] : 0x10 + i;
}

/* Parses FAKE_NVML_PROCS[_i]; returns the count, or -error. */
static int procs(unsigned int i, unsigned int *pids, unsigned long long *mib) {
    char s[VALUE_LEN];
    if (!value("PROCS", (int)i, s, sizeof s)) return 0;
    if (strncmp(s, "err:", 4) == 0) return -atoi(s + 4);
    if (strcmp(s, "ns") == 0) return -NVML_ERROR_NOT_SUPPORTED;
    int n = 0;
    for (char *tok = strtok(s, ", "); tok && n < MAX_PROCS; tok = strtok(NULL, ", ")) {
        char *colon = strchr(tok, ':');
        pids[n] = (unsigned int)strtoul(tok, NULL, 10);
        mib[n] = colon ? strtoull(colon + 1, NULL, 10) : 0;
        n++;
    }
    return n;
}

/* ---- init, shutdown, errors, system ---- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    int e = global_int("INIT_ERROR", 0);
    if (e) return e;
    init_count++;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 25: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *buf, unsigned int n) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    char s[VALUE_LEN];
    if (!value("DRIVER_VERSION", -1, s, sizeof s)) snprintf(s, sizeof s, "999.99-fake");
    return copy_string(s, buf, n);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *buf, unsigned int n) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_string("13.999.99-fake", buf, n);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = 12080;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

/* ---- devices ---- */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned)ngpus();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *h) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!h || i >= (unsigned)ngpus()) return NVML_ERROR_INVALID_ARGUMENT;
    devs[i].index = i;
    *h = &devs[i];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t h, unsigned int *index) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!h || !index || h < devs || h >= devs + MAX_GPUS) return NVML_ERROR_INVALID_ARGUMENT;
    *index = h->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t h, char *buf, unsigned int n) {
    nvmlReturn_t r = check(h, buf);
    if (r) return r;
    char s[VALUE_LEN];
    if (!value("NAME", (int)h->index, s, sizeof s)) snprintf(s, sizeof s, "NVIDIA H100 80GB HBM3");
    return copy_string(s, buf, n);
}

static void uuid_of(unsigned int i, char *s, size_t n) {
    if (!value("UUID", (int)i, s, n)) snprintf(s, n, "GPU-fake-0000-0000-0000-%012u", i);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *buf, unsigned int n) {
    nvmlReturn_t r = check(h, buf);
    if (r) return r;
    char s[VALUE_LEN];
    uuid_of(h->index, s, sizeof s);
    return copy_string(s, buf, n);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *h) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !h) return NVML_ERROR_INVALID_ARGUMENT;
    char s[VALUE_LEN];
    for (unsigned int i = 0; i < (unsigned)ngpus(); i++) {
        uuid_of(i, s, sizeof s);
        if (strcmp(s, uuid) == 0) return nvmlDeviceGetHandleByIndex_v2(i, h);
    }
    return 6; /* NVML_ERROR_NOT_FOUND */
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t h, nvmlPciInfo_t *pci) {
    nvmlReturn_t r = check(h, pci);
    if (r) return r;
    unsigned long long bus;
    char s[VALUE_LEN];
    if (value("PCI_BUS", (int)h->index, s, sizeof s) && *s) bus = strtoull(s, NULL, 16);
    else bus = pci_bus(h->index);
    memset(pci, 0, sizeof *pci);
    pci->domain = 0;
    pci->bus = (unsigned int)bus;
    pci->device = 0;
    pci->pciDeviceId = 0x233010DE;
    pci->pciSubSystemId = 0x16C110DE;
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", pci->bus);
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", pci->bus);
    return NVML_SUCCESS;
}

static nvmlReturn_t memory(nvmlDevice_t h, unsigned long long *total, unsigned long long *reserved,
                           unsigned long long *used) {
    unsigned long long t, r, u;
    nvmlReturn_t e = number("MEM_TOTAL_MIB", (int)h->index, 81559, &t);
    if (e) return e;
    if ((e = number("MEM_RESERVED_MIB", (int)h->index, 0, &r))) return e;
    unsigned int pids[MAX_PROCS];
    unsigned long long mib[MAX_PROCS], sum = 0;
    int np = procs(h->index, pids, mib);
    for (int k = 0; k < np; k++) sum += mib[k];
    if ((e = number("MEM_USED_MIB", (int)h->index, sum, &u))) return e;
    if (r > t) r = t;
    if (u > t - r) u = t - r;
    *total = t << 20;
    *reserved = r << 20;
    *used = u << 20;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m) {
    nvmlReturn_t r = check(h, m);
    if (r) return r;
    unsigned long long reserved;
    r = memory(h, &m->total, &reserved, &m->used);
    if (r) return r;
    m->used += reserved; /* v1 counts the driver's reserve as used */
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m) {
    nvmlReturn_t r = check(h, m);
    if (r) return r;
    unsigned long long dummy;
    if ((r = number("MEM_V2", (int)h->index, 0, &dummy))) return r;
    if (m->version != 0x02000028) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    r = memory(h, &m->total, &m->reserved, &m->used);
    if (r) return r;
    m->free = m->total - m->reserved - m->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *u) {
    nvmlReturn_t r = check(h, u);
    if (r) return r;
    unsigned long long g, m;
    if ((r = number("UTIL", (int)h->index, 0, &g))) return r;
    if ((r = number("MEM_UTIL", (int)h->index, 0, &m))) return r;
    u->gpu = (unsigned int)g;
    u->memory = (unsigned int)m;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t h, int sensor, unsigned int *t) {
    nvmlReturn_t r = check(h, t);
    if (r) return r;
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT; /* only NVML_TEMPERATURE_GPU */
    unsigned long long v;
    if ((r = number("TEMP_C", (int)h->index, 35, &v))) return r;
    *t = (unsigned int)v;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t h, unsigned int *mw) {
    nvmlReturn_t r = check(h, mw);
    if (r) return r;
    unsigned long long v;
    if ((r = number("POWER_MW", (int)h->index, 70000, &v))) return r;
    *mw = (unsigned int)v;
    return NVML_SUCCESS;
}

/* NVML_CLOCK_GRAPHICS = 0, NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2, NVML_CLOCK_VIDEO = 3 */
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t h, int type, unsigned int *mhz) {
    nvmlReturn_t r = check(h, mhz);
    if (r) return r;
    unsigned long long v;
    switch (type) {
    case 0: case 1: r = number("SM_CLOCK_MHZ", (int)h->index, 1980, &v); break;
    case 2: r = number("MEM_CLOCK_MHZ", (int)h->index, 2619, &v); break;
    case 3: v = 1545; r = NVML_SUCCESS; break;
    default: return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (r) return r;
    *mhz = (unsigned int)v;
    return NVML_SUCCESS;
}

/* As NVML: with too small a buffer (or none) it sets *count to the number
 * needed and returns Insufficient Size; with no processes it returns Success
 * and *count = 0. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    nvmlReturn_t r = check(h, count);
    if (r) return r;
    unsigned int pids[MAX_PROCS];
    unsigned long long mib[MAX_PROCS];
    int n = procs(h->index, pids, mib);
    if (n < 0) return -n;
    if (*count < (unsigned)n || (n > 0 && !infos)) {
        *count = (unsigned)n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (int k = 0; k < n; k++) {
        infos[k].pid = pids[k];
        infos[k].usedGpuMemory = mib[k] << 20;
        infos[k].gpuInstanceId = 0xFFFFFFFFu; /* not MIG */
        infos[k].computeInstanceId = 0xFFFFFFFFu;
    }
    *count = (unsigned)n;
    return NVML_SUCCESS;
}

/* ---- energy, clocks event reasons, ECC ---- */

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t h, unsigned long long *mj) {
    nvmlReturn_t r = check(h, mj);
    if (r) return r;
    return number("ENERGY_MJ", (int)h->index, 3600000, mj);
}

static int old_clocks_api(void) {
    char s[VALUE_LEN];
    return value("CLOCKS_EVENT_API", -1, s, sizeof s) && strcmp(s, "throttle") == 0;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t h, unsigned long long *reasons) {
    nvmlReturn_t r = check(h, reasons);
    if (r) return r;
    if (old_clocks_api()) return NVML_ERROR_NOT_SUPPORTED;
    return number("CLOCKS_EVENT_REASONS", (int)h->index, 0, reasons);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t h, unsigned long long *reasons) {
    nvmlReturn_t r = check(h, reasons);
    if (r) return r;
    return number("CLOCKS_EVENT_REASONS", (int)h->index, 0, reasons);
}

/* errorType: 0 corrected, 1 uncorrected; counterType: 0 volatile, 1 aggregate (the same here) */
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t h, int errorType, int counterType, unsigned long long *count) {
    nvmlReturn_t r = check(h, count);
    if (r) return r;
    if ((errorType != 0 && errorType != 1) || (counterType != 0 && counterType != 1)) return NVML_ERROR_INVALID_ARGUMENT;
    return number(errorType == 0 ? "ECC_CORRECTED" : "ECC_UNCORRECTED", (int)h->index, 0, count);
}

/* ---- events: XID errors ---- */

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    for (int k = 0; k < 4; k++) {
        if (!event_sets_used[k]) {
            event_sets_used[k] = 1;
            memset(&event_sets[k], 0, sizeof event_sets[k]);
            *set = &event_sets[k];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_UNKNOWN;
}

static int valid_set(nvmlEventSet_t set) {
    return set >= event_sets && set < event_sets + 4 && event_sets_used[set - event_sets];
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!valid_set(set)) return NVML_ERROR_INVALID_ARGUMENT;
    event_sets_used[set - event_sets] = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t h, unsigned long long *types) {
    nvmlReturn_t r = check(h, types);
    if (r) return r;
    char s[VALUE_LEN];
    *types = value("XID", (int)h->index, s, sizeof s) && strcmp(s, "ns") == 0 ? 0 : XID_EVENT;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t h, unsigned long long types, nvmlEventSet_t set) {
    nvmlReturn_t r = check(h, set);
    if (r) return r;
    if (!valid_set(set)) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long supported;
    nvmlDeviceGetSupportedEventTypes(h, &supported);
    if (types & ~supported) return NVML_ERROR_NOT_SUPPORTED;
    set->types[h->index] |= types;
    return NVML_SUCCESS;
}

/* The n-th XID of FAKE_NVML_XID_<i>, or -1 when there is none. */
static long nth_xid(unsigned int i, int n) {
    char s[VALUE_LEN];
    if (!value("XID", (int)i, s, sizeof s) || strcmp(s, "ns") == 0) return -1;
    int k = 0;
    for (char *tok = strtok(s, ", "); tok; tok = strtok(NULL, ", "), k++)
        if (k == n) return strtol(tok, NULL, 10);
    return -1;
}

/* Delivers the next undelivered XID of any registered GPU; with none, NVML_ERROR_TIMEOUT (10) at
 * once (the fake never waits: timeoutms only matters to a real GPU). */
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    (void)timeoutms;
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!valid_set(set) || !data) return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < (unsigned)ngpus(); i++) {
        if (!(set->types[i] & XID_EVENT)) continue;
        long xid = nth_xid(i, set->delivered[i]);
        if (xid < 0) continue;
        set->delivered[i]++;
        memset(data, 0, sizeof *data);
        devs[i].index = i;
        data->device = &devs[i];
        data->eventType = XID_EVENT;
        data->eventData = (unsigned long long)xid;
        data->gpuInstanceId = 0xFFFFFFFFu;
        data->computeInstanceId = 0xFFFFFFFFu;
        return NVML_SUCCESS;
    }
    return 10; /* NVML_ERROR_TIMEOUT */
}
