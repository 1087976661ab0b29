/*
 * baedal._speedups._mqtt: the inline loop of protocols/mqtt/codec.py ``Parser.feed`` in C.
 *
 * Why: splitting a read into its PUBLISH and PUBACK packets in Python cost about 9k
 * instructions per PUBLISH and 8k per PUBACK, a fifth of the broker's work per QoS 0
 * message (bench/micro/bench_mqtt_pipeline.py, docs/benchmarks.md, issue 13).
 *
 * Contract (``Parser.feed``): ``split(data, pos, version, topics, max_packet_size,
 * append, Publish, Ack)`` reads whole packets from ``data`` (bytes) at ``pos`` while each
 * is one the Python loop decodes inline, builds the same object the Python loop builds
 * (``Publish(topic, payload, qos, retain, dup, packet_id, {})`` or ``Ack(4, packet_id)``),
 * hands it to ``append`` and returns the position after the last one.  It stops, and
 * leaves the packet to Python, at anything else: an incomplete packet, a remaining length
 * over four bytes or a packet over ``max_packet_size`` (Python raises), any other packet
 * type, a PUBLISH whose flags, lengths, packet id or MQTT 5.0 property block the inline
 * path would not take, and a PUBLISH whose topic is not in ``topics`` yet (the raw-bytes
 * -> str cache of validated topics; Python checks the UTF-8 and wildcards and caches it).
 * So the C code never decides that input is bad and cannot change which inputs are
 * refused or how; the tests compare it with the Python loop.  Only an error from an
 * allocation or from ``append``/the constructors propagates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PUBLISH 3
#define PUBACK 4

static PyObject *split(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 8 || !PyBytes_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "split(data: bytes, pos, version, topics, max_packet_size, "
                                     "append, Publish, Ack)");
    return NULL;
  }
  PyObject *data = args[0];
  Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
  long version = PyLong_AsLong(args[2]);
  PyObject *topics = args[3];
  Py_ssize_t max_packet_size = PyLong_AsSsize_t(args[4]);
  PyObject *append = args[5], *publish_type = args[6], *ack_type = args[7];
  if (PyErr_Occurred()) return NULL;
  const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
  Py_ssize_t size = PyBytes_GET_SIZE(data);
  int have_topics = PyDict_Check(topics);
  PyObject *puback = NULL; /* the int 4, created at the first PUBACK */

  while (size - pos >= 2) {
    unsigned int first = buf[pos];
    Py_ssize_t remaining = 0, i = pos + 1;
    int shift = 0, whole = 0;
    while (i < size && shift < 28) {
      unsigned int b = buf[i++];
      remaining |= (Py_ssize_t)(b & 0x7F) << shift;
      if (!(b & 0x80)) {
        whole = 1;
        break;
      }
      shift += 7;
    }
    if (!whole) break; /* not whole yet, or a fifth length byte: Python's */
    if (i - pos + remaining > max_packet_size) break;
    Py_ssize_t end = i + remaining;
    if (end > size) break;
    PyObject *packet = NULL;
    if ((first >> 4) == PUBLISH && remaining >= 3) {
      unsigned int qos = (first >> 1) & 3;
      if (qos == 3 || (!qos && (first & 8))) break;
      Py_ssize_t start = i + 2;
      Py_ssize_t topic_end = start + ((buf[i] << 8) | buf[i + 1]);
      Py_ssize_t body = qos ? topic_end + 2 : topic_end;
      long packet_id = -1; /* -1: none (QoS 0) */
      if (qos) {
        if (body > end) break;
        packet_id = (buf[topic_end] << 8) | buf[topic_end + 1];
        if (packet_id == 0) break;
      }
      if (version == 5) body += 1;
      if (!(start < topic_end && body <= end)) break;
      if (version != 4 && buf[body - 1] != 0) break; /* MQTT 5.0 properties: Python's */
      if (!have_topics) break;
      PyObject *raw = PyBytes_FromStringAndSize((const char *)buf + start, topic_end - start);
      if (raw == NULL) goto error;
      PyObject *topic = PyDict_GetItemWithError(topics, raw); /* borrowed: owned below */
      Py_DECREF(raw);
      if (topic == NULL) {
        if (PyErr_Occurred()) goto error;
        break; /* not validated yet: Python checks it and caches it */
      }
      Py_INCREF(topic);
      PyObject *fields[7] = {topic, NULL, NULL, (first & 1) ? Py_True : Py_False,
                             (first & 8) ? Py_True : Py_False, NULL, NULL};
      fields[1] = PyBytes_FromStringAndSize((const char *)buf + body, end - body);
      fields[2] = PyLong_FromLong((long)qos);
      fields[5] = packet_id < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(packet_id);
      fields[6] = PyDict_New();
      if (fields[1] && fields[2] && fields[5] && fields[6])
        packet = PyObject_Vectorcall(publish_type, fields, 7, NULL);
      Py_XDECREF(fields[1]);
      Py_XDECREF(fields[2]);
      Py_XDECREF(fields[5]);
      Py_XDECREF(fields[6]);
      Py_DECREF(topic);
    } else if (first == 0x40 && remaining == 2) {
      long packet_id = (buf[i] << 8) | buf[i + 1];
      if (packet_id == 0) break;
      if (puback == NULL && (puback = PyLong_FromLong(PUBACK)) == NULL) goto error;
      PyObject *fields[2] = {puback, PyLong_FromLong(packet_id)};
      if (fields[1]) packet = PyObject_Vectorcall(ack_type, fields, 2, NULL);
      Py_XDECREF(fields[1]);
    } else {
      break;
    }
    if (packet == NULL) goto error;
    PyObject *result = PyObject_CallOneArg(append, packet);
    Py_DECREF(packet);
    if (result == NULL) goto error;
    Py_DECREF(result);
    pos = end;
  }
  Py_XDECREF(puback);
  return PyLong_FromSsize_t(pos);
error:
  Py_XDECREF(puback);
  return NULL;
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "Whole plain PUBLISH/PUBACK packets from data[pos:] to append; the new position."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mqtt",
                                    "The MQTT codec's packet split (see the file's header).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__mqtt(void) { return PyModule_Create(&module); }
