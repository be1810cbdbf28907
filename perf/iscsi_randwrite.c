/* iscsi_randwrite: bounded random-I/O load generator for an iSCSI LUN, on libiscsi's async API.
 *
 * Role: the write half of perf/iscsi_bench.sh (libiscsi's iscsi-perf only reads). Keeps -m
 * WRITE16s (or READ16s with -r) of -b bytes in flight at random -b-aligned offsets for -t
 * seconds, then drains and prints `iops N` as its last line. Single thread: one session, one
 * poll() loop over iscsi_get_fd/iscsi_which_events/iscsi_service. Each in-flight command owns
 * one slot (its data buffer lives until the completion callback).
 *
 * -V (verify, writes only): never has two writes to the same block in flight, stamps every
 * block with (block, sequence), then reads back every written block and compares all bytes.
 *
 * Bounded: the run stops issuing at the deadline; if no command completes for -s seconds while
 * some are outstanding, it reports a stall and exits 3. Any SCSI error, transport error or
 * short read exits 1; a verify mismatch exits 2.
 *
 * Build: cc -O2 -Wall -Wextra -o iscsi_randwrite perf/iscsi_randwrite.c -liscsi
 * Usage: iscsi_randwrite [-r] [-V] [-m QD] [-t SECONDS] [-b BYTES] [-s STALL_S]
 * iscsi://HOST:PORT/IQN/LUN
 */
#include <errno.h>
#include <inttypes.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { kExitScsiError = 1, kExitMismatch = 2, kExitStall = 3, kExitUsage = 64 };

struct slot {
  struct run* run;
  unsigned char* buf;
  uint64_t block; /* index in units of io_bytes */
  uint32_t seq;
  int busy;
};

struct run {
  struct iscsi_context* iscsi;
  int lun;
  uint32_t lba_bytes;
  uint64_t block_count; /* io-sized blocks on the LUN */
  uint32_t io_bytes;
  int read_mode;
  int verify;
  int queue_depth;
  struct slot* slots;
  int in_flight;
  int stopping;
  uint64_t completed;
  uint64_t rng;
  uint64_t last_progress_ns;
  /* verify state */
  uint32_t* block_seq;       /* last completed stamp per block, 0 = never written */
  unsigned char* block_busy; /* a write to this block is in flight */
  uint32_t next_seq;
  uint64_t verify_cursor;
  uint64_t verified;
  uint64_t mismatches;
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t next_rand(struct run* r) { /* xorshift64* */
  r->rng ^= r->rng >> 12;
  r->rng ^= r->rng << 25;
  r->rng ^= r->rng >> 27;
  return r->rng * 2685821657736338717ull;
}

static void stamp(unsigned char* buf, uint32_t bytes, uint64_t block, uint32_t seq) {
  uint64_t base = (block << 32) | seq;
  for (uint32_t i = 0; i < bytes / 8; i++) {
    uint64_t w = base ^ ((uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull);
    memcpy(buf + 8 * i, &w, 8);
  }
}

static void fail_task(struct run* r, struct scsi_task* task, int status, const char* what) {
  if (status == SCSI_STATUS_CHECK_CONDITION && task != NULL) {
    fprintf(
        stderr,
        "iscsi_randwrite: %s failed: CHECK CONDITION sense key 0x%x (%s) asc/ascq 0x%04x (%s)\n",
        what, task->sense.key, scsi_sense_key_str(task->sense.key), task->sense.ascq,
        scsi_sense_ascq_str(task->sense.ascq));
  } else {
    fprintf(stderr, "iscsi_randwrite: %s failed: status 0x%x: %s\n", what, status,
            iscsi_get_error(r->iscsi));
  }
  exit(kExitScsiError);
}

static void issue(struct run* r, struct slot* s);

static void on_done(struct iscsi_context* iscsi, int status, void* command_data,
                    void* private_data) {
  (void)iscsi;
  struct slot* s = private_data;
  struct run* r = s->run;
  struct scsi_task* task = command_data;
  const char* what = r->read_mode || r->verify_cursor ? "READ16" : "WRITE16";

  if (status != SCSI_STATUS_GOOD) fail_task(r, task, status, what);
  if (r->read_mode || r->verify_cursor) {
    if (task->datain.size != (int)r->io_bytes) {
      fprintf(stderr, "iscsi_randwrite: READ16 returned %d bytes, expected %u\n", task->datain.size,
              r->io_bytes);
      exit(kExitScsiError);
    }
  }
  if (r->verify && r->verify_cursor) { /* verify phase: compare with the stamp */
    stamp(s->buf, r->io_bytes, s->block, s->seq);
    if (memcmp(s->buf, task->datain.data, r->io_bytes) != 0) {
      if (r->mismatches < 10)
        fprintf(stderr,
                "iscsi_randwrite: verify mismatch at byte offset %" PRIu64
                " (expected stamp seq %u)\n",
                s->block * r->io_bytes, s->seq);
      r->mismatches++;
    }
    r->verified++;
  } else if (r->verify) {
    r->block_seq[s->block] = s->seq;
    r->block_busy[s->block] = 0;
  }
  scsi_free_scsi_task(task);
  s->busy = 0;
  r->in_flight--;
  r->completed++;
  r->last_progress_ns = now_ns();
  if (!r->stopping) issue(r, s);
}

static void issue(struct run* r, struct slot* s) {
  struct scsi_task* task;
  uint64_t lba;

  if (r->verify && r->verify_cursor) { /* verify phase: next written block */
    while (r->verify_cursor <= r->block_count && r->block_seq[r->verify_cursor - 1] == 0)
      r->verify_cursor++;
    if (r->verify_cursor > r->block_count) return;
    s->block = r->verify_cursor - 1;
    s->seq = r->block_seq[s->block];
    r->verify_cursor++;
  } else {
    s->block = next_rand(r) % r->block_count;
    if (r->verify) {
      while (r->block_busy[s->block]) s->block = next_rand(r) % r->block_count;
      r->block_busy[s->block] = 1;
      s->seq = ++r->next_seq;
      stamp(s->buf, r->io_bytes, s->block, s->seq);
    }
  }
  lba = s->block * (r->io_bytes / r->lba_bytes);
  if (r->read_mode || r->verify_cursor)
    task = iscsi_read16_task(r->iscsi, r->lun, lba, r->io_bytes, r->lba_bytes, 0, 0, 0, 0, 0,
                             on_done, s);
  else
    task = iscsi_write16_task(r->iscsi, r->lun, lba, s->buf, r->io_bytes, r->lba_bytes, 0, 0, 0, 0,
                              0, on_done, s);
  if (task == NULL) {
    fprintf(stderr, "iscsi_randwrite: cannot queue command: %s\n", iscsi_get_error(r->iscsi));
    exit(kExitScsiError);
  }
  s->busy = 1;
  r->in_flight++;
}

/* Runs the poll loop until `deadline_ns` (then stops issuing) and everything drains. */
static void pump(struct run* r, uint64_t deadline_ns, uint64_t stall_ns) {
  while (r->in_flight > 0) {
    struct pollfd pfd = {.fd = iscsi_get_fd(r->iscsi), .events = iscsi_which_events(r->iscsi)};
    uint64_t t = now_ns();
    if (!r->stopping && t >= deadline_ns) r->stopping = 1;
    if (t - r->last_progress_ns > stall_ns) {
      fprintf(stderr,
              "iscsi_randwrite: stall: %d commands outstanding, none completed for %.1f s "
              "(%" PRIu64 " completed so far)\n",
              r->in_flight, (t - r->last_progress_ns) / 1e9, r->completed);
      exit(kExitStall);
    }
    if (pfd.events == 0) { /* reconnecting: libiscsi asks us to wait */
      usleep(100000);
      continue;
    }
    int n = poll(&pfd, 1, 100);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("iscsi_randwrite: poll");
      exit(kExitScsiError);
    }
    if (iscsi_service(r->iscsi, n > 0 ? pfd.revents : 0) < 0) {
      fprintf(stderr, "iscsi_randwrite: iscsi_service failed: %s\n", iscsi_get_error(r->iscsi));
      exit(kExitScsiError);
    }
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: iscsi_randwrite [-r] [-V] [-m QD] [-t SECONDS] [-b BYTES] [-s STALL_S] "
          "[-i INITIATOR] iscsi://HOST:PORT/IQN/LUN\n");
  exit(kExitUsage);
}

int main(int argc, char** argv) {
  struct run r = {.queue_depth = 32, .io_bytes = 4096};
  double seconds = 10, stall_s = 10;
  const char* initiator = "iqn.2026-11.io.ferry:iscsi-randwrite";
  int c;

  while ((c = getopt(argc, argv, "rVm:t:b:s:i:")) != -1) {
    switch (c) {
      case 'r':
        r.read_mode = 1;
        break;
      case 'V':
        r.verify = 1;
        break;
      case 'm':
        r.queue_depth = atoi(optarg);
        break;
      case 't':
        seconds = atof(optarg);
        break;
      case 'b':
        r.io_bytes = (uint32_t)strtoul(optarg, NULL, 0);
        break;
      case 's':
        stall_s = atof(optarg);
        break;
      case 'i':
        initiator = optarg;
        break;
      default:
        usage();
    }
  }
  if (optind != argc - 1 || r.queue_depth < 1 || r.queue_depth > 4096 || seconds <= 0 ||
      r.io_bytes == 0 || stall_s <= 0 || (r.verify && r.read_mode))
    usage();

  r.iscsi = iscsi_create_context(initiator);
  if (r.iscsi == NULL) {
    fprintf(stderr, "iscsi_randwrite: cannot create context\n");
    return kExitScsiError;
  }
  struct iscsi_url* url = iscsi_parse_full_url(r.iscsi, argv[optind]);
  if (url == NULL) {
    fprintf(stderr, "iscsi_randwrite: bad URL: %s\n", iscsi_get_error(r.iscsi));
    return kExitUsage;
  }
  iscsi_set_targetname(r.iscsi, url->target);
  iscsi_set_session_type(r.iscsi, ISCSI_SESSION_NORMAL);
  iscsi_set_header_digest(r.iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C); /* as iscsi-perf */
  if (url->user[0] != '\0' &&
      iscsi_set_initiator_username_pwd(r.iscsi, url->user, url->passwd) != 0) {
    fprintf(stderr, "iscsi_randwrite: cannot set CHAP credentials\n");
    return kExitScsiError;
  }
  if (iscsi_full_connect_sync(r.iscsi, url->portal, url->lun) != 0) {
    fprintf(stderr, "iscsi_randwrite: login failed: %s\n", iscsi_get_error(r.iscsi));
    return kExitScsiError;
  }
  r.lun = url->lun;
  iscsi_destroy_url(url);

  struct scsi_task* task = iscsi_readcapacity16_sync(r.iscsi, r.lun);
  if (task == NULL || task->status != SCSI_STATUS_GOOD)
    fail_task(&r, task, task ? task->status : -1, "READ CAPACITY(16)");
  struct scsi_readcapacity16* rc16 = scsi_datain_unmarshall(task);
  if (rc16 == NULL) {
    fprintf(stderr, "iscsi_randwrite: cannot parse READ CAPACITY(16) data\n");
    return kExitScsiError;
  }
  r.lba_bytes = rc16->block_length;
  uint64_t lun_bytes = (rc16->returned_lba + 1) * (uint64_t)rc16->block_length;
  scsi_free_scsi_task(task);
  if (r.lba_bytes == 0 || r.io_bytes % r.lba_bytes != 0 || lun_bytes < r.io_bytes) {
    fprintf(stderr,
            "iscsi_randwrite: I/O size %u does not fit logical block %u / LUN %" PRIu64 " bytes\n",
            r.io_bytes, r.lba_bytes, lun_bytes);
    return kExitUsage;
  }
  r.block_count = lun_bytes / r.io_bytes;
  if (r.verify && (uint64_t)r.queue_depth > r.block_count / 2) usage();

  r.slots = calloc((size_t)r.queue_depth, sizeof *r.slots);
  if (r.slots == NULL) return kExitScsiError;
  for (int i = 0; i < r.queue_depth; i++) {
    r.slots[i].run = &r;
    r.slots[i].buf = aligned_alloc(4096, (r.io_bytes + 4095) / 4096 * 4096);
    if (r.slots[i].buf == NULL) return kExitScsiError;
    memset(r.slots[i].buf, 0xA5, r.io_bytes);
  }
  if (r.verify) {
    r.block_seq = calloc(r.block_count, sizeof *r.block_seq);
    r.block_busy = calloc(r.block_count, 1);
    if (r.block_seq == NULL || r.block_busy == NULL) return kExitScsiError;
  }
  r.rng = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x2545F4914F6CDD1Dull;

  uint64_t stall_ns = (uint64_t)(stall_s * 1e9);
  uint64_t start = now_ns();
  r.last_progress_ns = start;
  for (int i = 0; i < r.queue_depth; i++) issue(&r, &r.slots[i]);
  pump(&r, start + (uint64_t)(seconds * 1e9), stall_ns);
  uint64_t end = now_ns();
  double elapsed = (end - start) / 1e9;
  uint64_t ios = r.completed;

  if (r.verify) { /* read back every block written, queue_depth at a time */
    r.stopping = 0;
    r.verify_cursor = 1;
    r.last_progress_ns = now_ns();
    for (int i = 0; i < r.queue_depth && r.verify_cursor <= r.block_count; i++)
      issue(&r, &r.slots[i]);
    pump(&r, UINT64_MAX, stall_ns);
    printf("verify %" PRIu64 " blocks, %" PRIu64 " mismatches\n", r.verified, r.mismatches);
  }

  iscsi_logout_sync(r.iscsi);
  iscsi_destroy_context(r.iscsi);
  printf("%s qd %d io_bytes %u ios %" PRIu64 " seconds %.3f\n", r.read_mode ? "read" : "write",
         r.queue_depth, r.io_bytes, ios, elapsed);
  printf("iops %.0f\n", ios / elapsed);
  return r.mismatches ? kExitMismatch : 0;
}
