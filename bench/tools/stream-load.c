/*
 * stream-load: a low-overhead AMQP 0-9-1 client for stream benchmarks (librabbitmq).
 *
 * Why: the Python clients of bench/stream_bench.py (baedal perf, bench/stream_reader.py)
 * cost 2-3 us of CPU per message, a fifth to a quarter of a core at 100k msg/s, on a
 * 2-vCPU machine where the broker under test needs the other core.  This tool costs a
 * fraction of that, and it is the same binary for every broker measured.
 *
 *   stream-load publish --host H --port P --queue Q [--count N | --seconds S]
 *                       [--size 1024] [--window 1000] [--declare]
 *   stream-load read    --host H --port P --queue Q --count N
 *                       [--offset first|last|next|NUMBER] [--prefetch 1000] [--ack-every 500]
 *
 * publish: declares Q as a stream (x-queue-type: stream, x-max-length-bytes 20 GB,
 *   x-stream-max-segment-size-bytes 100 MB) with --declare, selects publisher confirms
 *   and publishes persistent bodies of --size bytes with at most --window unconfirmed.
 *   Frames are encoded once as a template and many messages go out in one send().
 *   Stops after --count confirmed or --seconds of publishing, then waits for every
 *   outstanding confirm.
 * read: basic.qos --prefetch, basic.consume with the x-stream-offset argument, counts
 *   deliveries, acks (multiple=true) every --ack-every, stops at --count.  Timed from
 *   the basic.consume request to the last delivery.
 *
 * Prints one JSON line on stdout: messages, seconds, rate, client_cpu_s (this process,
 * user + system, over its whole life), and first_s (read: consume -> first delivery).
 * Exit status 0 on success, 1 on any failure (described on stderr).
 */
#define _GNU_SOURCE
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL

static const char *host = "127.0.0.1", *user = "guest", *pass = "guest", *vhost = "/";
static const char *queue = NULL, *offset = "first";
static int port = 5672, window = 1000, prefetch = 1000, ack_every = 500, declare = 0;
static size_t size = 1024;
static uint64_t count = 0;
static double seconds = 0, timeout_s = 1200;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static double cpu_self(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what, amqp_rpc_reply_t r) {
  if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
    fprintf(stderr, "stream-load: %s: %s\n", what, amqp_error_string2(r.library_error));
  } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
             r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
    amqp_channel_close_t *m = r.reply.decoded;
    fprintf(stderr, "stream-load: %s: channel closed %u %.*s\n", what, m->reply_code,
            (int)m->reply_text.len, (char *)m->reply_text.bytes);
  } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
             r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
    amqp_connection_close_t *m = r.reply.decoded;
    fprintf(stderr, "stream-load: %s: connection closed %u %.*s\n", what, m->reply_code,
            (int)m->reply_text.len, (char *)m->reply_text.bytes);
  } else {
    fprintf(stderr, "stream-load: %s failed\n", what);
  }
  exit(1);
}

static void check(const char *what, amqp_connection_state_t c) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) die(what, r);
}

static amqp_connection_state_t connect_broker(void) {
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *s = amqp_tcp_socket_new(c);
  if (!s || amqp_socket_open(s, host, port) != AMQP_STATUS_OK) {
    fprintf(stderr, "stream-load: cannot connect to %s:%d\n", host, port);
    exit(1);
  }
  amqp_rpc_reply_t r = amqp_login(c, vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, user, pass);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) die("login", r);
  amqp_channel_open(c, 1);
  check("channel.open", c);
  return c;
}

static uint8_t *put16(uint8_t *p, uint16_t v) { *p++ = v >> 8; *p++ = v; return p; }
static uint8_t *put32(uint8_t *p, uint32_t v) { p = put16(p, v >> 16); return put16(p, v); }
static uint8_t *put64(uint8_t *p, uint64_t v) { p = put32(p, v >> 32); return put32(p, v); }

static int send_all(int fd, const uint8_t *buf, size_t len) {
  while (len) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pf = {fd, POLLOUT, 0};
        poll(&pf, 1, 100);
        continue;
      }
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Confirms: the broker acks in order (multiple=true covers everything up to its tag),
 * so the highest tag acked is all that needs keeping. */
static uint64_t confirmed = 0, nacked = 0;

/* Read confirms already received; wait up to wait_ms for the first frame. */
static void pump_confirms(amqp_connection_state_t c, int wait_ms) {
  for (int first = 1;; first = 0) {
    amqp_frame_t f;
    struct timeval tv = {first ? wait_ms / 1000 : 0, first ? (wait_ms % 1000) * 1000 : 0};
    int rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
    if (rc == AMQP_STATUS_TIMEOUT) return;
    if (rc != AMQP_STATUS_OK) {
      fprintf(stderr, "stream-load: publisher read: %s\n", amqp_error_string2(rc));
      exit(1);
    }
    if (f.frame_type == AMQP_FRAME_METHOD) {
      if (f.payload.method.id == AMQP_BASIC_ACK_METHOD ||
          f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
        /* ack and nack share the layout of their first two fields */
        amqp_basic_ack_t *a = f.payload.method.decoded;
        uint64_t before = confirmed;
        /* one stream: both brokers confirm in publish order, so a single ack of tag T
         * also means everything below T was answered before it */
        if (a->delivery_tag > confirmed) confirmed = a->delivery_tag;
        if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) nacked += confirmed - before;
      } else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                 f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        fprintf(stderr, "stream-load: publisher: the server closed the channel\n");
        exit(1);
      }
    }
    amqp_maybe_release_buffers(c);
    if (!amqp_frames_enqueued(c) && !amqp_data_in_buffer(c)) {
      struct pollfd pf = {amqp_get_sockfd(c), POLLIN, 0};
      if (poll(&pf, 1, 0) <= 0) return;
    }
  }
}

static void declare_stream(amqp_connection_state_t c) {
  amqp_table_entry_t e[3];
  e[0].key = amqp_cstring_bytes("x-queue-type");
  e[0].value.kind = AMQP_FIELD_KIND_UTF8;
  e[0].value.value.bytes = amqp_cstring_bytes("stream");
  e[1].key = amqp_cstring_bytes("x-max-length-bytes");
  e[1].value.kind = AMQP_FIELD_KIND_I64;
  e[1].value.value.i64 = 20000000000LL;
  e[2].key = amqp_cstring_bytes("x-stream-max-segment-size-bytes");
  e[2].value.kind = AMQP_FIELD_KIND_I64;
  e[2].value.value.i64 = 100000000LL;
  amqp_table_t args = {3, e};
  amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
  check("queue.declare", c);
}

static int run_publish(void) {
  amqp_connection_state_t c = connect_broker();
  if (declare) declare_stream(c);
  amqp_confirm_select(c, 1);
  check("confirm.select", c);
  int fd = amqp_get_sockfd(c);

  /* basic.publish (default exchange, routing key = the stream) + content header with
   * delivery-mode 2, encoded once; bodies follow in frames of at most frame_max. */
  uint8_t tmpl[1024], enc[600], *p = tmpl;
  amqp_basic_publish_t pm = {0};
  pm.exchange = amqp_empty_bytes;
  pm.routing_key = amqp_cstring_bytes(queue);
  int n = amqp_encode_method(AMQP_BASIC_PUBLISH_METHOD, &pm, (amqp_bytes_t){sizeof enc, enc});
  if (n < 0) { fprintf(stderr, "stream-load: encode publish\n"); return 1; }
  *p++ = AMQP_FRAME_METHOD;
  p = put16(p, 1);
  p = put32(p, (uint32_t)(4 + n));
  p = put32(p, AMQP_BASIC_PUBLISH_METHOD);
  memcpy(p, enc, (size_t)n);
  p += n;
  *p++ = AMQP_FRAME_END;
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.delivery_mode = 2;
  n = amqp_encode_properties(AMQP_BASIC_CLASS, &props, (amqp_bytes_t){sizeof enc, enc});
  if (n < 0) { fprintf(stderr, "stream-load: encode properties\n"); return 1; }
  *p++ = AMQP_FRAME_HEADER;
  p = put16(p, 1);
  p = put32(p, (uint32_t)(12 + n));
  p = put16(p, AMQP_BASIC_CLASS);
  p = put16(p, 0);
  p = put64(p, size);
  memcpy(p, enc, (size_t)n);
  p += n;
  *p++ = AMQP_FRAME_END;
  size_t tmpl_len = (size_t)(p - tmpl);
  size_t chunk = (size_t)amqp_get_frame_max(c) - 8;
  size_t frames = size ? (size + chunk - 1) / chunk : 0;
  size_t wire = tmpl_len + size + frames * 8;
  uint8_t *body = malloc(size + 1);
  memset(body, 'x', size + 1);
  size_t cap = wire * 64 > 262144 ? wire * 64 : 262144, len = 0;
  uint8_t *out = malloc(cap);
  int batch = 64; /* messages per send(), fewer when the window is small */
  if (batch > window / 4) batch = window / 4 > 0 ? window / 4 : 1;

  int64_t t0 = now_ns();
  int64_t stop_at = seconds > 0 ? t0 + (int64_t)(seconds * NS) : INT64_MAX;
  int64_t hard = t0 + (int64_t)(timeout_s * NS);
  uint64_t sent = 0;
  int in_batch = 0;
  for (;;) {
    if (count && sent >= count) break;
    if (now_ns() >= stop_at) break;
    while (sent - confirmed >= (uint64_t)window) {
      if (len) {
        if (send_all(fd, out, len)) goto send_err;
        len = 0;
        in_batch = 0;
      }
      pump_confirms(c, 100);
      if (now_ns() > hard) { fprintf(stderr, "stream-load: confirm timeout\n"); return 1; }
    }
    uint8_t *w = out + len;
    memcpy(w, tmpl, tmpl_len);
    w += tmpl_len;
    for (size_t off = 0; off < size;) {
      size_t take = size - off < chunk ? size - off : chunk;
      *w++ = AMQP_FRAME_BODY;
      w = put16(w, 1);
      w = put32(w, (uint32_t)take);
      memcpy(w, body + off, take);
      w += take;
      *w++ = AMQP_FRAME_END;
      off += take;
    }
    len = (size_t)(w - out);
    sent++;
    if (++in_batch >= batch || len + wire > cap) {
      if (send_all(fd, out, len)) goto send_err;
      len = 0;
      in_batch = 0;
      pump_confirms(c, 0);
    }
  }
  if (len && send_all(fd, out, len)) goto send_err;
  while (confirmed < sent) {
    pump_confirms(c, 100);
    if (now_ns() > hard) { fprintf(stderr, "stream-load: final confirm timeout\n"); return 1; }
  }
  int64_t t1 = now_ns();
  double elapsed = (t1 - t0) / 1e9;
  amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  printf("{\"mode\": \"publish\", \"messages\": %llu, \"nacked\": %llu, \"seconds\": %.6f, "
         "\"rate\": %.1f, \"client_cpu_s\": %.4f}\n",
         (unsigned long long)(confirmed - nacked), (unsigned long long)nacked, elapsed,
         (confirmed - nacked) / elapsed, cpu_self());
  return nacked ? 1 : 0;
send_err:
  fprintf(stderr, "stream-load: send: %s\n", strerror(errno));
  return 1;
}

static int run_read(void) {
  amqp_connection_state_t c = connect_broker();
  amqp_basic_qos(c, 1, 0, (uint16_t)(prefetch > 65535 ? 65535 : prefetch), 0);
  check("basic.qos", c);
  if (ack_every > prefetch) ack_every = prefetch;
  if (ack_every < 1) ack_every = 1;
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes("x-stream-offset");
  char *end = NULL;
  long long number = strtoll(offset, &end, 10);
  if (end && *end == 0 && end != offset) {
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = number;
  } else {
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(offset);
  }
  amqp_table_t args = {1, &e};
  int64_t t0 = now_ns(), t_first = 0, t_last = 0;
  amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes("stream-load"), 0, 0,
                     0, args);
  check("basic.consume", c);
  int64_t hard = t0 + (int64_t)(timeout_s * NS);
  uint64_t received = 0, tag = 0, acked = 0, body_left = 0;
  int in_msg = 0;
  while (received < count) {
    amqp_frame_t f;
    struct timeval tv = {0, 100000};
    int rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
    if (rc == AMQP_STATUS_TIMEOUT) {
      if (now_ns() > hard) { fprintf(stderr, "stream-load: read timeout\n"); return 1; }
      continue;
    }
    if (rc != AMQP_STATUS_OK) {
      fprintf(stderr, "stream-load: read: %s\n", amqp_error_string2(rc));
      return 1;
    }
    int complete = 0;
    if (f.frame_type == AMQP_FRAME_METHOD) {
      if (f.payload.method.id == AMQP_BASIC_DELIVER_METHOD) {
        tag = ((amqp_basic_deliver_t *)f.payload.method.decoded)->delivery_tag;
        in_msg = 1;
      } else if (f.payload.method.id == AMQP_BASIC_CANCEL_METHOD ||
                 f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                 f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        fprintf(stderr, "stream-load: consumer cancelled or closed by the server\n");
        return 1;
      }
    } else if (in_msg && f.frame_type == AMQP_FRAME_HEADER) {
      body_left = f.payload.properties.body_size;
      complete = body_left == 0;
    } else if (in_msg && f.frame_type == AMQP_FRAME_BODY) {
      size_t got = f.payload.body_fragment.len;
      body_left = got >= body_left ? 0 : body_left - got;
      complete = body_left == 0;
    }
    if (complete) {
      in_msg = 0;
      received++;
      t_last = now_ns();
      if (!t_first) t_first = t_last;
      if (tag - acked >= (uint64_t)ack_every || received >= count) {
        if (amqp_basic_ack(c, 1, tag, 1) != AMQP_STATUS_OK) {
          fprintf(stderr, "stream-load: basic.ack failed\n");
          return 1;
        }
        acked = tag;
      }
    }
    amqp_maybe_release_buffers(c);
  }
  double elapsed = (t_last - t0) / 1e9;
  amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  printf("{\"mode\": \"read\", \"messages\": %llu, \"seconds\": %.6f, \"rate\": %.1f, "
         "\"first_s\": %.6f, \"client_cpu_s\": %.4f}\n",
         (unsigned long long)received, elapsed, received / elapsed, (t_first - t0) / 1e9,
         cpu_self());
  return 0;
}

int main(int argc, char **argv) {
  static struct option opts[] = {
      {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},      {"user", 1, 0, 'u'},
      {"password", 1, 0, 'P'}, {"vhost", 1, 0, 'v'},     {"queue", 1, 0, 'q'},
      {"count", 1, 0, 'c'},    {"seconds", 1, 0, 's'},   {"size", 1, 0, 'S'},
      {"window", 1, 0, 'w'},   {"prefetch", 1, 0, 'f'},  {"ack-every", 1, 0, 'a'},
      {"offset", 1, 0, 'o'},   {"declare", 0, 0, 'd'},   {"timeout", 1, 0, 't'},
      {0, 0, 0, 0}};
  if (argc < 2 || (strcmp(argv[1], "publish") && strcmp(argv[1], "read"))) {
    fprintf(stderr, "usage: stream-load publish|read [options] (see the source header)\n");
    return 2;
  }
  const char *mode = argv[1];
  optind = 2;
  int o;
  while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (o) {
    case 'h': host = optarg; break;
    case 'p': port = atoi(optarg); break;
    case 'u': user = optarg; break;
    case 'P': pass = optarg; break;
    case 'v': vhost = optarg; break;
    case 'q': queue = optarg; break;
    case 'c': count = strtoull(optarg, NULL, 10); break;
    case 's': seconds = atof(optarg); break;
    case 'S': size = strtoull(optarg, NULL, 10); break;
    case 'w': window = atoi(optarg); break;
    case 'f': prefetch = atoi(optarg); break;
    case 'a': ack_every = atoi(optarg); break;
    case 'o': offset = optarg; break;
    case 'd': declare = 1; break;
    case 't': timeout_s = atof(optarg); break;
    default: return 2;
    }
  }
  if (!queue || window < 1 || (!strcmp(mode, "read") && !count) ||
      (!strcmp(mode, "publish") && !count && seconds <= 0)) {
    fprintf(stderr, "stream-load: --queue, and --count (read) or --count/--seconds (publish)\n");
    return 2;
  }
  return strcmp(mode, "publish") ? run_read() : run_publish();
}
