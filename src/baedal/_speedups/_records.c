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

static PyMethodDef methods[] = {
    {"append_record", (PyCFunction)(void (*)(void))append_record, METH_FASTCALL,
     "append_record(pieces, key, value, headers, delta, count) -> record length, or None: "
     "encode it in Python"},
    {"decode_body", decode_body, METH_VARARGS,
     "decode_body(buffer, count, base_offset, last_delta, base_timestamp, max_timestamp, "
     "log_append_time, names, name_limit) -> list of rows, or None: decode them in Python"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records",
                                    "The record loops of record_batch (decode_rows, RecordBuilder.add) in C.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }
