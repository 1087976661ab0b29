/*
 * baedal._speedups._records: the record loop of storage.record_batch.decode_rows in C
 * (and, further down, append_record: RecordBuilder.add's encoding).
 *
 * Why: reading a stream, decoding each record's varints in Python cost about 17k
 * instructions per record, two thirds of the whole AMQP stream read path
 * (docs/benchmarks.md).  This is the same loop, for the same result.
 *
 * Contract (storage/record_batch.py, ``decode_rows``): given the records section of one
 * batch (``buffer``, uncompressed) and the batch header's fields, return the list of
 * ``(offset, timestamp, key, value, headers, attributes)`` tuples that the Python loop
 * returns: consecutive records with byte-identical header sections share one headers
 * list; header names go through the same ``names`` cache (bytes -> str, names up to
 * 64 bytes, at most ``name_limit`` entries).
 *
 * It never raises for bad data: on anything unusual (a malformed record, a field
 * running past its record, a header name that is not UTF-8, a number outside 64 bits)
 * it returns None, and the caller runs the Python loop, which then raises the
 * RecordBatchError it always raised, with its message.  So the C code only has to be
 * right on valid input, where the tests compare it with the Python loop, and cannot
 * change which inputs are refused or how.  Only MemoryError (or another Python error
 * from an allocation) propagates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A zig-zag varint of at most 10 bytes at buf[*pos..limit); 0 = bad or over 64 bits. */
static int read_varint(const unsigned char *buf, Py_ssize_t *pos, Py_ssize_t limit,
                       int64_t *out) {
  uint64_t result = 0;
  int shift = 0;
  Py_ssize_t p = *pos;
  for (;;) {
    if (p >= limit) return 0;
    unsigned char byte = buf[p++];
    if (shift == 63 && (byte & 0x7E)) return 0; /* bits beyond 64: Python's path */
    result |= (uint64_t)(byte & 0x7F) << shift;
    if (!(byte & 0x80)) break;
    shift += 7;
    if (shift > 63) return 0;
  }
  *pos = p;
  *out = (int64_t)((result >> 1) ^ (~(result & 1) + 1));
  return 1;
}

/* One varint into `name`: a single byte inline (most lengths, deltas and counts), else
 * read_varint; bad input jumps to `fallback`. */
#define VARINT(name, limit)                                        \
  do {                                                             \
    if (pos < (limit) && buf[pos] < 0x80) {                        \
      unsigned char b_ = buf[pos++];                               \
      name = (b_ & 1) ? -(int64_t)(b_ >> 1) - 1 : (int64_t)(b_ >> 1); \
    } else if (!read_varint(buf, &pos, (limit), &name)) {          \
      goto fallback;                                               \
    }                                                              \
  } while (0)

static PyObject *decode_body(PyObject *self, PyObject *args) {
  const unsigned char *buf;
  Py_ssize_t end, count;
  long long base_offset, last_delta, base_timestamp, max_timestamp;
  int log_append_time;
  PyObject *names;
  Py_ssize_t name_limit;
  if (!PyArg_ParseTuple(args, "y#nLLLLpO!n", &buf, &end, &count, &base_offset, &last_delta,
                        &base_timestamp, &max_timestamp, &log_append_time, &PyDict_Type,
                        &names, &name_limit))
    return NULL;
  if (count < 0 || count > end) Py_RETURN_NONE;
  PyObject *rows = PyList_New(count);
  if (!rows) return NULL;
  PyObject *headers = NULL; /* the previous record's headers list (a new reference) */
  PyObject *fresh = NULL;   /* a headers list being decoded */
  Py_ssize_t section_start = -1, section_size = -1;
  Py_ssize_t pos = 0;
  for (Py_ssize_t i = 0; i < count; i++) {
    int64_t length, timestamp_delta, offset_delta, key_length, value_length;
    VARINT(length, end);
    if (length < 6 || length > end - pos) goto fallback;
    Py_ssize_t stop = pos + (Py_ssize_t)length;
    long attributes = buf[pos++];
    VARINT(timestamp_delta, stop);
    VARINT(offset_delta, stop);
    if (offset_delta < 0 || offset_delta > last_delta) goto fallback;
    VARINT(key_length, stop);
    if (key_length < -1 || key_length > stop - pos) goto fallback;
    Py_ssize_t key_at = pos;
    if (key_length > 0) pos += (Py_ssize_t)key_length;
    VARINT(value_length, stop);
    if (value_length < -1 || value_length > stop - pos) goto fallback;
    Py_ssize_t value_at = pos;
    if (value_length > 0) pos += (Py_ssize_t)value_length;
    /* the header section: the previous record's bytes again, or decoded here */
    if (!(headers && stop - pos == section_size &&
          memcmp(buf + pos, buf + section_start, (size_t)section_size) == 0)) {
      Py_ssize_t start = pos;
      int64_t header_count;
      VARINT(header_count, stop);
      if (header_count < 0 || header_count * 2 > stop - pos) goto fallback;
      fresh = PyList_New((Py_ssize_t)header_count);
      if (!fresh) goto error;
      for (Py_ssize_t h = 0; h < (Py_ssize_t)header_count; h++) {
        int64_t name_length, header_length;
        VARINT(name_length, stop);
        if (name_length < 0 || name_length > stop - pos) { goto fallback; }
        PyObject *raw = PyBytes_FromStringAndSize((const char *)buf + pos, (Py_ssize_t)name_length);
        if (!raw) { goto error; }
        PyObject *name = PyDict_GetItemWithError(names, raw); /* borrowed */
        if (name) {
          Py_INCREF(name);
        } else if (PyErr_Occurred()) {
          Py_DECREF(raw); goto error;
        } else {
          name = PyUnicode_DecodeUTF8((const char *)buf + pos, (Py_ssize_t)name_length, "strict");
          if (!name) {
            Py_DECREF(raw);
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) { PyErr_Clear(); goto fallback; }
            goto error;
          }
          if (name_length <= 64 && PyDict_GET_SIZE(names) < name_limit &&
              PyDict_SetItem(names, raw, name) < 0) {
            Py_DECREF(raw); Py_DECREF(name); goto error;
          }
        }
        Py_DECREF(raw);
        pos += (Py_ssize_t)name_length;
        /* header value */
        if (pos < stop && buf[pos] < 0x80) {
          unsigned char b = buf[pos++];
          header_length = (b & 1) ? -(int64_t)(b >> 1) - 1 : (int64_t)(b >> 1);
        } else if (!read_varint(buf, &pos, stop, &header_length)) {
          Py_DECREF(name); goto fallback;
        }
        if (header_length < -1 || header_length > stop - pos) {
          Py_DECREF(name); goto fallback;
        }
        PyObject *value;
        if (header_length < 0) {
          value = Py_None;
          Py_INCREF(value);
        } else {
          value = PyBytes_FromStringAndSize((const char *)buf + pos, (Py_ssize_t)header_length);
          if (!value) { Py_DECREF(name); goto error; }
          pos += (Py_ssize_t)header_length;
        }
        PyObject *pair = PyTuple_New(2);
        if (!pair) { Py_DECREF(name); Py_DECREF(value); goto error; }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyList_SET_ITEM(fresh, h, pair);
      }
      if (pos != stop) { goto fallback; }
      Py_XDECREF(headers);
      headers = fresh;
      fresh = NULL;
      section_start = start;
      section_size = stop - start;
    }
    pos = stop;
    /* the row */
    int64_t timestamp;
    if (log_append_time) {
      timestamp = max_timestamp;
    } else if (__builtin_add_overflow((int64_t)base_timestamp, timestamp_delta, &timestamp)) {
      goto fallback;
    }
    PyObject *row = PyTuple_New(6);
    if (!row) goto error;
    PyList_SET_ITEM(rows, i, row); /* owned by rows from here: freed with it */
    int64_t offset;
    if (__builtin_add_overflow((int64_t)base_offset, offset_delta, &offset)) goto fallback;
    PyObject *item = PyLong_FromLongLong(offset);
    if (!item) goto error;
    PyTuple_SET_ITEM(row, 0, item);
    item = PyLong_FromLongLong(timestamp);
    if (!item) goto error;
    PyTuple_SET_ITEM(row, 1, item);
    if (key_length < 0) {
      item = Py_None;
      Py_INCREF(item);
    } else {
      item = PyBytes_FromStringAndSize((const char *)buf + key_at, (Py_ssize_t)key_length);
      if (!item) goto error;
    }
    PyTuple_SET_ITEM(row, 2, item);
    if (value_length < 0) {
      item = Py_None;
      Py_INCREF(item);
    } else {
      item = PyBytes_FromStringAndSize((const char *)buf + value_at, (Py_ssize_t)value_length);
      if (!item) goto error;
    }
    PyTuple_SET_ITEM(row, 3, item);
    Py_INCREF(headers);
    PyTuple_SET_ITEM(row, 4, headers);
    item = PyLong_FromLong(attributes);
    if (!item) goto error;
    PyTuple_SET_ITEM(row, 5, item);
  }
  if (pos != end) goto fallback;
  Py_XDECREF(headers);
  return rows;
fallback:
  Py_XDECREF(fresh);
  Py_XDECREF(headers);
  Py_DECREF(rows);
  Py_RETURN_NONE;
error:
  Py_XDECREF(fresh);
  Py_XDECREF(headers);
  Py_DECREF(rows);
  return NULL;
}

/* Encode side: RecordBuilder.add (storage/record_batch.py) in C.
 *
 * Why: per stream publish, encoding the record's head (length, attributes, timestamp
 * and offset deltas, key, value length: five varints) cost ~40 bytecodes in Python.
 *
 * append_record(pieces, key, value, headers, delta, count) appends the record's pieces
 * to the list `pieces`: one new bytes object holding the varint record length and the
 * head (up to the value length), then `value` and `headers` themselves (not copied).
 * Joined, they are the bytes RecordBuilder.add's Python code appends (tests compare).
 * Returns the record's length (without its own length varint), or None when the
 * arguments are not exactly (list, bytes or None, bytes, bytes, int, int): the Python
 * code then does it, so what is accepted never differs. */

/* The zig-zag varint of v into out (at most 10 bytes); the bytes written. */
static int put_varint(unsigned char *out, int64_t v) {
  uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
  int n = 0;
  while (z >= 0x80) {
    out[n++] = (unsigned char)(z | 0x80);
    z >>= 7;
  }
  out[n++] = (unsigned char)z;
  return n;
}

static PyObject *append_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 6) {
    PyErr_SetString(PyExc_TypeError, "append_record takes 6 arguments");
    return NULL;
  }
  PyObject *pieces = args[0], *key = args[1], *value = args[2], *headers = args[3];
  if (!PyList_CheckExact(pieces) || !PyBytes_CheckExact(value) || !PyBytes_CheckExact(headers) ||
      (key != Py_None && !PyBytes_CheckExact(key)) || !PyLong_CheckExact(args[4]) ||
      !PyLong_CheckExact(args[5]))
    Py_RETURN_NONE;
  int overflow = 0;
  long long delta = PyLong_AsLongLongAndOverflow(args[4], &overflow);
  if (overflow || (delta == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  long long count = PyLong_AsLongLongAndOverflow(args[5], &overflow);
  if (overflow || (count == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  Py_ssize_t key_length = key == Py_None ? -1 : PyBytes_GET_SIZE(key);
  Py_ssize_t value_length = PyBytes_GET_SIZE(value);
  unsigned char fields[32]; /* attributes, delta, count, key length: 1 + 3 * 10 */
  int n = 0;
  fields[n++] = 0;
  n += put_varint(fields + n, delta);
  n += put_varint(fields + n, count);
  n += put_varint(fields + n, key_length);
  unsigned char value_varint[10];
  int vn = put_varint(value_varint, value_length);
  Py_ssize_t key_bytes = key_length > 0 ? key_length : 0;
  Py_ssize_t head = n + key_bytes + vn;
  int64_t length = (int64_t)head + value_length + PyBytes_GET_SIZE(headers);
  unsigned char length_varint[10];
  int ln = put_varint(length_varint, length);
  PyObject *out = PyBytes_FromStringAndSize(NULL, ln + head);
  if (!out) return NULL;
  char *p = PyBytes_AS_STRING(out);
  memcpy(p, length_varint, ln);
  p += ln;
  memcpy(p, fields, n);
  p += n;
  if (key_bytes) {
    memcpy(p, PyBytes_AS_STRING(key), key_bytes);
    p += key_bytes;
  }
  memcpy(p, value_varint, vn);
  int failed = PyList_Append(pieces, out);
  Py_DECREF(out);
  if (failed || PyList_Append(pieces, value) || PyList_Append(pieces, headers)) return NULL;
  return PyLong_FromLongLong(length);
}

/* ---------------------------------------------------------------------------------------
 * Queue-log read side (storage/queue_log.py, storage/record_batch.py): CRC-32C, the batch
 * header check, the recovery scan's per-batch walk, and the queue log's common record.
 *
 * Why: reading a deep durable queue back, each message is one RecordBatch v2 batch, and
 * the Python header check (a 13-field struct unpack, five comparisons, a memoryview slice
 * and a crc32c call) plus the common record's in-place decode cost about as much as the
 * whole old version-1 record read; recovery paid the same check and five varint reads
 * per batch.  Same contract as decode_body above: each function returns None for
 * anything it does not accept (bad data, a shape it does not handle, numbers past 64
 * bits), and the Python code, which stays the reference, then gives its own answer (the
 * same result, or its RecordBatchError).  So the C code never changes what is accepted
 * or refused, only how fast the common case goes; tests/unit/storage compares the two.
 * ------------------------------------------------------------------------------------- */

/* CRC-32C: the crc32c package's function, the very one record_batch.py calls (hardware
 * CRC where the CPU has it), looked up once at import.  Called through a read-only
 * memoryview of the batch: one call per batch, no copy. */
static PyObject *crc32c_function;

/* 1 when the CRC-32C of p[0..n) is `expected`; 0 when it is not or the call failed (the
 * error is cleared: the Python path then checks the batch and answers itself). */
static int crc_matches(const unsigned char *p, size_t n, uint32_t expected) {
  PyObject *view = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)n, PyBUF_READ);
  if (view == NULL) {
    PyErr_Clear();
    return 0;
  }
  PyObject *value = PyObject_CallOneArg(crc32c_function, view);
  Py_DECREF(view);
  if (value == NULL) {
    PyErr_Clear();
    return 0;
  }
  unsigned long crc = PyLong_AsUnsignedLong(value);
  Py_DECREF(value);
  if (crc == (unsigned long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    return 0;
  }
  return (uint32_t)crc == expected;
}

/* Big-endian reads. */
static inline uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}
static inline uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline int16_t get_i16(const unsigned char *p) { return (int16_t)(p[0] << 8 | p[1]); }

/* The bytes of `obj` when it is bytes, a bytearray or a one-dimensional memoryview of
 * bytes (so len() and the byte count agree): 1, with *view to release when view->obj is
 * set; 0 = not something these functions take (the Python code answers).  -1 = error. */
static int get_bytes(PyObject *obj, const unsigned char **buf, Py_ssize_t *size, Py_buffer *view) {
  view->obj = NULL;
  if (PyBytes_CheckExact(obj)) {
    *buf = (const unsigned char *)PyBytes_AS_STRING(obj);
    *size = PyBytes_GET_SIZE(obj);
    return 1;
  }
  if (PyMemoryView_Check(obj)) {
    Py_buffer *inner = PyMemoryView_GET_BUFFER(obj);
    if (inner->ndim != 1 || inner->itemsize != 1) return 0;
  } else if (!PyByteArray_CheckExact(obj)) {
    return 0;
  }
  if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
    view->obj = NULL;
    PyErr_Clear(); /* a released memoryview: Python raises its own error */
    return 0;
  }
  *buf = (const unsigned char *)view->buf;
  *size = view->len;
  return 1;
}

/* The 13 fields of a batch header (BATCH_HEADER, ">qiibIhiqqqhii") as unpacked ints. */
typedef struct {
  int64_t base_offset;
  int32_t length;
  int32_t leader_epoch;
  int8_t magic;
  uint32_t crc;
  int16_t attributes;
  int32_t last_delta;
  int64_t base_timestamp, max_timestamp, producer_id;
  int16_t producer_epoch;
  int32_t base_sequence, count;
} batch_header;

#define HEADER_SIZE 61
#define BATCH_OVERHEAD 12

static void read_header(const unsigned char *p, batch_header *h) {
  h->base_offset = (int64_t)get_u64(p);
  h->length = (int32_t)get_u32(p + 8);
  h->leader_epoch = (int32_t)get_u32(p + 12);
  h->magic = (int8_t)p[16];
  h->crc = get_u32(p + 17);
  h->attributes = get_i16(p + 21);
  h->last_delta = (int32_t)get_u32(p + 23);
  h->base_timestamp = (int64_t)get_u64(p + 27);
  h->max_timestamp = (int64_t)get_u64(p + 35);
  h->producer_id = (int64_t)get_u64(p + 43);
  h->producer_epoch = get_i16(p + 51);
  h->base_sequence = (int32_t)get_u32(p + 53);
  h->count = (int32_t)get_u32(p + 57);
}

/* record_batch.decode_header's checks (then, with check_crc, check_batch's): 1 = they
 * pass, 0 = one fails. */
static int header_ok(const unsigned char *buf, Py_ssize_t available, long long max_batch_bytes,
                     int check_crc, batch_header *h) {
  if (available < HEADER_SIZE) return 0;
  read_header(buf, h);
  if (h->magic != 2) return 0;
  if (h->length < HEADER_SIZE - BATCH_OVERHEAD ||
      (long long)h->length + BATCH_OVERHEAD > max_batch_bytes)
    return 0;
  if (h->last_delta < 0 || h->count < 0) return 0;
  if (check_crc) {
    Py_ssize_t size = (Py_ssize_t)h->length + BATCH_OVERHEAD;
    if (available < size) return 0;
    if (!crc_matches(buf + 21, (size_t)(size - 21), h->crc)) return 0;
  }
  return 1;
}

/* The fields as struct.unpack gives them (Py_BuildValue parses its format per call:
 * about a thousand instructions more per batch). */
static PyObject *header_tuple(const batch_header *h) {
  long long values[13] = {h->base_offset,    h->length,         h->leader_epoch,
                          h->magic,          h->crc,            h->attributes,
                          h->last_delta,     h->base_timestamp, h->max_timestamp,
                          h->producer_id,    h->producer_epoch, h->base_sequence,
                          h->count};
  PyObject *fields = PyTuple_New(13);
  if (!fields) return NULL;
  for (int i = 0; i < 13; i++) {
    PyObject *item = PyLong_FromLongLong(values[i]);
    if (!item) {
      Py_DECREF(fields);
      return NULL;
    }
    PyTuple_SET_ITEM(fields, i, item);
  }
  return fields;
}

/* batch_header(data, pos, max_batch_bytes, check_crc) -> (fields, size) or None. */
static PyObject *batch_header_c(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 4) {
    PyErr_SetString(PyExc_TypeError, "batch_header takes 4 arguments");
    return NULL;
  }
  Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
  long long max_batch_bytes = PyLong_AsLongLong(args[2]);
  if ((pos == -1 || max_batch_bytes == -1) && PyErr_Occurred()) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  int check_crc = PyObject_IsTrue(args[3]);
  if (check_crc < 0) return NULL;
  const unsigned char *buf;
  Py_ssize_t size;
  Py_buffer view;
  if (pos < 0 || get_bytes(args[0], &buf, &size, &view) != 1) Py_RETURN_NONE;
  batch_header h;
  int ok = pos <= size && header_ok(buf + pos, size - pos, max_batch_bytes, check_crc, &h);
  if (view.obj) PyBuffer_Release(&view);
  if (!ok) Py_RETURN_NONE;
  PyObject *out = PyTuple_New(2);
  if (!out) return NULL;
  PyObject *item = header_tuple(&h);
  if (!item) goto error;
  PyTuple_SET_ITEM(out, 0, item);
  item = PyLong_FromSsize_t((Py_ssize_t)h.length + BATCH_OVERHEAD);
  if (!item) goto error;
  PyTuple_SET_ITEM(out, 1, item);
  return out;
error:
  Py_DECREF(out);
  return NULL;
}

/* A varint that Python's _read_varint reads as the same int64 (it also reads longer
 * values, which the caller then leaves to Python): 1, or 0. */
#define SCAN_VARINT(name)                                 \
  do {                                                    \
    if (!read_varint(buf, &at, end, &(name))) goto python; \
  } while (0)

/* scan_queue_batches(data, pos, base, max_batch_bytes, persistent, transient)
 *   -> (pos, deadlines)
 *
 * queue_log.scan_batches' walk over intact batches: from `pos`, every batch that
 * queue_log._batch_at accepts (whole, CRC-32C, magic, plausible length, its own position
 * base | offset as baseOffset, one record, lastOffsetDelta 0, the record's first fields
 * readable) goes into `persistent` (offset -> value length, at least 0) or `transient`
 * (offset), exactly as the Python loop files it; it stops at the first batch it does not
 * accept (or the end) and returns that offset, and whether a persistent batch had the
 * deadline attribute.  The Python loop then looks at that batch itself. */
static PyObject *scan_queue_batches(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 6) {
    PyErr_SetString(PyExc_TypeError, "scan_queue_batches takes 6 arguments");
    return NULL;
  }
  PyObject *data = args[0], *persistent = args[4], *transient = args[5];
  Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
  long long base = PyLong_AsLongLong(args[2]);
  long long max_batch_bytes = PyLong_AsLongLong(args[3]);
  if ((pos == -1 || base == -1 || max_batch_bytes == -1) && PyErr_Occurred()) return NULL;
  if (!PyBytes_CheckExact(data) || !PyDict_CheckExact(persistent) ||
      !PyList_CheckExact(transient) || pos < 0) {
    PyErr_SetString(PyExc_TypeError, "scan_queue_batches(bytes, int, int, int, dict, list)");
    return NULL;
  }
  const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
  Py_ssize_t size = PyBytes_GET_SIZE(data);
  int deadlines = 0;
  while (pos < size) {
    batch_header h;
    if (!header_ok(buf + pos, size - pos, max_batch_bytes, 1, &h)) break;
    if (h.base_offset != (int64_t)((uint64_t)base | (uint64_t)pos) || h.count != 1 ||
        h.last_delta != 0)
      break;
    Py_ssize_t end = pos + (Py_ssize_t)h.length + BATCH_OVERHEAD;
    Py_ssize_t at = pos + HEADER_SIZE;
    int64_t ignored, key_length, value_length;
    SCAN_VARINT(ignored); /* record length */
    at += 1;              /* attributes */
    SCAN_VARINT(ignored); /* timestampDelta */
    SCAN_VARINT(ignored); /* offsetDelta */
    SCAN_VARINT(key_length);
    if (key_length > 0) {
      if (key_length > end - at) goto python; /* Python then finds the record short */
      at += (Py_ssize_t)key_length;
    }
    SCAN_VARINT(value_length);
    PyObject *offset = PyLong_FromSsize_t(pos);
    if (!offset) return NULL;
    int failed;
    if (h.attributes & 0x4000) { /* ATTR_TRANSIENT */
      failed = PyList_Append(transient, offset);
    } else {
      PyObject *body = PyLong_FromLongLong(value_length > 0 ? value_length : 0);
      failed = !body || PyDict_SetItem(persistent, offset, body) < 0;
      Py_XDECREF(body);
      if (h.attributes & 0x2000) deadlines = 1; /* ATTR_DEADLINE */
    }
    Py_DECREF(offset);
    if (failed) return NULL;
    pos = end;
  }
python:;
  PyObject *offset = PyLong_FromSsize_t(pos);
  if (!offset) return NULL;
  PyObject *out = PyTuple_Pack(2, offset, deadlines ? Py_True : Py_False);
  Py_DECREF(offset);
  return out;
}

/* decode_common(batch, exchanges)
 *   -> (exchange, routing key, body, True, 0, None, published_at) or None
 *
 * queue_log.decode_message's in-place read of the common record (what encode_message's
 * fast path writes: attributes 0, deltas 0, short key and value lengths, a header
 * section that is a known exchange's, looked up in `exchanges`), for a bytes batch whose
 * CRC the caller checked; the arguments of the Message that code builds.  The same
 * conditions, byte for byte (see the Python code); None where it would take the general
 * path. */
static PyObject *last_section; /* the previous lookup's key: no new bytes per record */

static PyObject *decode_common(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "decode_common takes 2 arguments");
    return NULL;
  }
  PyObject *batch = args[0], *exchanges = args[1];
  if (!PyBytes_CheckExact(batch) || !PyDict_CheckExact(exchanges)) Py_RETURN_NONE;
  const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(batch);
  Py_ssize_t n = PyBytes_GET_SIZE(batch);
  if (n <= 66 || b[21] != 0 || b[22] != 0) Py_RETURN_NONE;
  Py_ssize_t at = b[61] < 0x80 ? 62 : b[62] < 0x80 ? 63 : 0;
  if (!at || b[at] != 0 || b[at + 1] != 0 || b[at + 2] != 0) Py_RETURN_NONE;
  unsigned char key_byte = b[at + 3];
  at += 4;
  Py_ssize_t key_at = at, key_length = 0;
  if (key_byte != 1) {     /* 1 = zig-zag -1: no key */
    if (key_byte & 0x81) { /* negative, or a longer varint */
      Py_RETURN_NONE;
    }
    key_length = key_byte >> 1;
    at += key_length;
  }
  if (at + 1 >= n) Py_RETURN_NONE; /* the value length's two bytes are not there */
  unsigned char value_byte = b[at];
  Py_ssize_t value_length;
  if (value_byte < 0x80) {
    value_length = value_byte >> 1;
    at += 1;
  } else if (b[at + 1] < 0x80) {
    value_length = ((value_byte & 0x7F) | (b[at + 1] << 7)) >> 1;
    at += 2;
  } else {
    Py_RETURN_NONE;
  }
  if (value_byte & 1) Py_RETURN_NONE; /* zig-zag: odd = negative */
  Py_ssize_t stop = at + value_length;
  if (stop >= n) Py_RETURN_NONE; /* an empty section names no exchange */
  Py_ssize_t section_length = n - stop;
  PyObject *section;
  if (last_section && PyBytes_GET_SIZE(last_section) == section_length &&
      memcmp(PyBytes_AS_STRING(last_section), b + stop, (size_t)section_length) == 0) {
    section = last_section;
    Py_INCREF(section);
  } else {
    section = PyBytes_FromStringAndSize((const char *)b + stop, section_length);
    if (!section) return NULL;
  }
  PyObject *exchange = PyDict_GetItemWithError(exchanges, section); /* borrowed */
  if (!exchange) {
    Py_DECREF(section);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
  }
  if (section != last_section) {
    Py_XSETREF(last_section, section); /* keeps our reference */
  } else {
    Py_DECREF(section);
  }
  int64_t timestamp = (int64_t)get_u64(b + 27);
  PyObject *key = PyUnicode_DecodeUTF8((const char *)b + key_at, key_length, "replace");
  if (!key) return NULL;
  PyObject *body = PyBytes_FromStringAndSize((const char *)b + at, value_length);
  if (!body) {
    Py_DECREF(key);
    return NULL;
  }
  PyObject *published = PyFloat_FromDouble((double)timestamp / 1000.0);
  if (!published) {
    Py_DECREF(key);
    Py_DECREF(body);
    return NULL;
  }
  PyObject *zero = PyLong_FromLong(0);
  PyObject *out = PyTuple_New(7);
  if (!out || !zero) {
    Py_XDECREF(out);
    Py_XDECREF(zero);
    Py_DECREF(key);
    Py_DECREF(body);
    Py_DECREF(published);
    return NULL;
  }
  Py_INCREF(exchange);
  PyTuple_SET_ITEM(out, 0, exchange);
  PyTuple_SET_ITEM(out, 1, key);
  PyTuple_SET_ITEM(out, 2, body);
  Py_INCREF(Py_True);
  PyTuple_SET_ITEM(out, 3, Py_True);
  PyTuple_SET_ITEM(out, 4, zero);
  Py_INCREF(Py_None);
  PyTuple_SET_ITEM(out, 5, Py_None);
  PyTuple_SET_ITEM(out, 6, published);
  return out;
}

static PyMethodDef methods[] = {
    {"append_record", (PyCFunction)(void (*)(void))append_record, METH_FASTCALL,
     "append_record(pieces, key, value, headers, delta, count) -> record length, or None: "
     "encode it in Python"},
    {"decode_body", decode_body, METH_VARARGS,
     "decode_body(buffer, count, base_offset, last_delta, base_timestamp, max_timestamp, "
     "log_append_time, names, name_limit) -> list of rows, or None: decode them in Python"},
    {"batch_header", (PyCFunction)(void (*)(void))batch_header_c, METH_FASTCALL,
     "batch_header(data, pos, max_batch_bytes, check_crc) -> (fields, size), or None: "
     "check it in Python"},
    {"scan_queue_batches", (PyCFunction)(void (*)(void))scan_queue_batches, METH_FASTCALL,
     "scan_queue_batches(data, pos, base, max_batch_bytes, persistent, transient) -> "
     "(offset of the first batch left to Python, deadlines seen)"},
    {"decode_common", (PyCFunction)(void (*)(void))decode_common, METH_FASTCALL,
     "decode_common(batch, exchanges) -> the common record's Message arguments, or None"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records",
                                    "The record loops of record_batch (decode_rows, RecordBuilder.add) and the queue log's read side in C.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__records(void) {
  PyObject *crc32c = PyImport_ImportModule("crc32c");
  if (crc32c == NULL) return NULL;
  crc32c_function = PyObject_GetAttrString(crc32c, "crc32c");
  Py_DECREF(crc32c);
  if (crc32c_function == NULL) return NULL;
  return PyModule_Create(&module);
}
