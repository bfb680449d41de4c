/* The compiled twin of the gateway's per-frame work (protocol/frames.py, protocol/messages.py).
 *
 * What is here, each with its pure-Python reference kept beside it and used whenever this
 * module is not built or AQUAFLEET_NO_EXTENSIONS is set (protocol/speedups.py):
 *
 *   FrameDecoder      frames.PyFrameDecoder: the resyncing decoder, CRC-16/MODBUS included;
 *                     its next_record() is ServerSession's online loop for the usual frame, a
 *                     MACed msgpack record (frame by frame in Python: _next_frame,
 *                     _handle_online, parse_record), any other frame handed back to it
 *   MacKey            frames.PyMacKey: HMAC-SHA256 with the padded keys hashed once (midstates)
 *   parse_record      messages.py_parse_record's common case: a msgpack TELEMETRY or EVENT
 *                     payload whose known keys hold plain integers. Anything else (CBOR, a
 *                     string, an extension, a bad value, a repeated key, trailing bytes...)
 *                     answers None and the caller takes the Python path, which accepts or
 *                     refuses it with its own error: this file never decides a refusal.
 *   parse_telemetry_report
 *                     messages.py_parse_telemetry_report's common case (the ledger writer's
 *                     device snapshot), under the same rule: None for anything unusual
 *   parse_uplink_record, seal_ack
 *                     the same two for an MQTT device's record and its ack (protocol/mqtt.py)
 *   entry_rows        the ledger writer's rows of a metering round (gateway/ledger.py
 *                     _entry_rows), None for anything but meter.lua's exact shape
 *   encode_ack        the ACK frame ServerSession.ack builds, byte for byte (msgpack only;
 *                     None otherwise, and the caller encodes it in Python)
 *   read_publishes    mqtt_wire.PyPacketReader.feed's common case: the QoS 0 PUBLISHes the
 *                     bridge receives; it stops at anything else, which the Python loop decides
 *
 * tests/protocol/test_speedups.py holds both twins to the same vectors and to each other on
 * generated input. Device input is hostile: every read below is bounds-checked against the
 * buffer's length before it happens.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_Init/Update/Final: the midstate is a plain struct */
#include <Python.h>
#include <structmember.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define MAGIC0 0x5a
#define MAGIC1 0xa5
#define VERSION 1
#define HEADER_SIZE 9
#define MAC_SIZE 8
#define CRC_SIZE 2
#define MAX_PAYLOAD 1024
#define MAX_UNPARSED 2048
#define FLAG_DUP 0x02
#define FLAG_MAC 0x04
#define ENCODING_MASK 0xF0
#define ENCODING_SHIFT 4
#define TYPE_TELEMETRY 0x20
#define TYPE_EVENT 0x21
#define TYPE_ACK 0x7F
#define U8 0xFFu
#define U16 0xFFFFu
#define U32 0xFFFFFFFFull
#define MAX_COUNTER 9007199254740991LL /* 2**53 - 1 */
#define SKIP_DEPTH 16                  /* nesting a skipped value may have before we give up */

/* Payload keys (protocol/constants.py Key). */
#define KEY_REC 0
#define KEY_BOOT 1
#define KEY_TS 2
#define KEY_FLOW_TOTAL 10
#define KEY_CNT_EPOCH 16
#define KEY_STATE_BITS 18
#define KEY_EVENT_KIND 20
#define KEY_EVENT_FLOW_TOTAL 23
#define KEY_TDS_IN 11
#define KEY_TDS_OUT 12
#define KEY_TEMPERATURE 13
#define KEY_FILTERS 14
#define KEY_FAULTS 15
#define KEY_SIGNAL 17
#define MAX_FILTERS 16
#define MIN_TEMPERATURE_DC (-1000)
#define MAX_TEMPERATURE_DC 2000
#define MIN_SIGNAL (-150)
#define MAX_SIGNAL 255

/* Set once by setup() from the Python side (the classes and codes the twins share). */
static PyObject *Frame_cls, *Record_cls, *Stats_cls, *RemoteError, *LocalError;
static PyObject *BadVersionCode, *BufferOverflowCode, *EmptyBytes;
static PyObject *Report_cls; /* messages.TelemetryReport, set by setup_report() */

static int
ready(void)
{
    if (Frame_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "aquafleet.protocol._speedups: setup() not called");
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------------ CRC */

static uint16_t crc_table[256];

static void
crc_init(void)
{
    for (int byte = 0; byte < 256; byte++) {
        uint16_t crc = (uint16_t)byte;
        for (int bit = 0; bit < 8; bit++)
            crc = (crc & 1) ? (uint16_t)((crc >> 1) ^ 0xA001) : (uint16_t)(crc >> 1);
        crc_table[byte] = crc;
    }
}

static uint16_t
crc16_modbus(const unsigned char *data, Py_ssize_t n)
{
    uint16_t crc = 0xFFFF;
    for (Py_ssize_t i = 0; i < n; i++)
        crc = (uint16_t)((crc >> 8) ^ crc_table[(crc ^ data[i]) & 0xFF]);
    return crc;
}

static PyObject *
py_crc16_modbus(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint16_t crc = crc16_modbus(view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(crc);
}

/* ------------------------------------------------------------------------------ MacKey */

typedef struct {
    PyObject_HEAD
    SHA256_CTX inner; /* SHA-256 state after (key XOR ipad) */
    SHA256_CTX outer; /* SHA-256 state after (key XOR opad) */
} MacKeyObject;

static PyTypeObject MacKey_Type;

static int
MacKey_init(MacKeyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;
    unsigned char block[SHA256_CBLOCK], pad[SHA256_CBLOCK];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:MacKey", kwlist, &key))
        return -1;
    memset(block, 0, sizeof block);
    if (key.len > SHA256_CBLOCK)
        SHA256(key.buf, (size_t)key.len, block);
    else
        memcpy(block, key.buf, (size_t)key.len);
    PyBuffer_Release(&key);
    for (int i = 0; i < SHA256_CBLOCK; i++)
        pad[i] = block[i] ^ 0x36;
    SHA256_Init(&self->inner);
    SHA256_Update(&self->inner, pad, sizeof pad);
    for (int i = 0; i < SHA256_CBLOCK; i++)
        pad[i] = block[i] ^ 0x5c;
    SHA256_Init(&self->outer);
    SHA256_Update(&self->outer, pad, sizeof pad);
    OPENSSL_cleanse(block, sizeof block);
    OPENSSL_cleanse(pad, sizeof pad);
    return 0;
}

/* HMAC-SHA256(key, head | data): `head` may be empty (an MQTT tag covers topic | envelope). */
static void
mac_compute2(const MacKeyObject *key, const void *head, size_t head_len, const void *data,
             size_t n, unsigned char out[SHA256_DIGEST_LENGTH])
{
    SHA256_CTX ctx = key->inner;
    unsigned char inner[SHA256_DIGEST_LENGTH];
    SHA256_Update(&ctx, head, head_len);
    SHA256_Update(&ctx, data, n);
    SHA256_Final(inner, &ctx);
    ctx = key->outer;
    SHA256_Update(&ctx, inner, sizeof inner);
    SHA256_Final(out, &ctx);
}

static void
mac_compute(const MacKeyObject *key, const unsigned char *data, size_t n,
            unsigned char out[SHA256_DIGEST_LENGTH])
{
    mac_compute2(key, "", 0, data, n, out);
}

static PyObject *
MacKey_mac(MacKeyObject *self, PyObject *arg)
{
    Py_buffer view;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    mac_compute(self, view.buf, (size_t)view.len, digest);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)digest, MAC_SIZE);
}

static PyObject *
MacKey_verify(MacKeyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer signed_, received;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    int ok;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "verify(signed, received) takes two arguments");
        return NULL;
    }
    if (args[1] == Py_None)
        Py_RETURN_FALSE;
    if (PyObject_GetBuffer(args[0], &signed_, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &received, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&signed_);
        return NULL;
    }
    mac_compute(self, signed_.buf, (size_t)signed_.len, digest);
    ok = received.len == MAC_SIZE && CRYPTO_memcmp(digest, received.buf, MAC_SIZE) == 0;
    PyBuffer_Release(&signed_);
    PyBuffer_Release(&received);
    return PyBool_FromLong(ok);
}

static PyObject *MacKey_verify_parts(MacKeyObject *self, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef MacKey_methods[] = {
    {"mac", (PyCFunction)MacKey_mac, METH_O,
     "First 8 bytes of HMAC-SHA256(key, signed)."},
    {"verify", (PyCFunction)(void (*)(void))MacKey_verify, METH_FASTCALL,
     "verify(signed, received): whether received is mac(signed), compared in constant time."},
    {"verify_parts", (PyCFunction)(void (*)(void))MacKey_verify_parts, METH_FASTCALL,
     "verify_parts(head, signed, received): verify(head + signed, received), unjoined."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MacKey_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aquafleet.protocol._speedups.MacKey",
    .tp_basicsize = sizeof(MacKeyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A frame MAC key: HMAC-SHA256 with the padded keys' hash states kept (RFC 2104).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MacKey_init,
    .tp_methods = MacKey_methods,
};

/* ------------------------------------------------------------------------------ FrameDecoder */

typedef struct {
    PyObject_HEAD
    PyObject *buffer; /* bytes, as received; never NULL */
    Py_ssize_t pos;   /* read position in buffer */
    PyObject *stats;  /* a frames.DecoderStats */
} DecoderObject;

static PyObject *
Decoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!ready())
        return NULL;
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "FrameDecoder() takes no arguments");
        return NULL;
    }
    DecoderObject *self = (DecoderObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->stats = PyObject_CallNoArgs(Stats_cls);
    if (self->stats == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(EmptyBytes);
    self->buffer = EmptyBytes;
    self->pos = 0;
    return (PyObject *)self;
}

static int
Decoder_traverse(DecoderObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->stats);
    return 0;
}

static int
Decoder_clear(DecoderObject *self)
{
    Py_CLEAR(self->stats);
    return 0;
}

static void
Decoder_dealloc(DecoderObject *self)
{
    PyObject_GC_UnTrack(self);
    Decoder_clear(self);
    Py_CLEAR(self->buffer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
raise_protocol_error(PyObject *cls, PyObject *code, PyObject *reason)
{
    if (reason == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunctionObjArgs(cls, code, reason, NULL);
    Py_DECREF(reason);
    if (exc != NULL) {
        PyErr_SetObject(cls, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
Decoder_feed(DecoderObject *self, PyObject *data)
{
    Py_ssize_t held = PyBytes_GET_SIZE(self->buffer) - self->pos;
    PyObject *joined;
    if (held > MAX_UNPARSED)
        return raise_protocol_error(
            LocalError, BufferOverflowCode,
            PyUnicode_FromString("feed() called again without draining next_frame()"));
    if (held) {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        joined = PyBytes_FromStringAndSize(NULL, held + view.len);
        if (joined == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
        memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(self->buffer) + self->pos,
               (size_t)held);
        memcpy(PyBytes_AS_STRING(joined) + held, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
    } else if (PyBytes_CheckExact(data)) {
        Py_INCREF(data);
        joined = data;
    } else {
        joined = PyBytes_FromObject(data);
        if (joined == NULL)
            return NULL;
    }
    Py_SETREF(self->buffer, joined);
    self->pos = 0;
    Py_RETURN_NONE;
}

/* Add a decoder's counts to its DecoderStats (only on the rare paths that count). */
static int
stats_add(PyObject *stats, const char *name, Py_ssize_t n)
{
    if (n == 0)
        return 0;
    PyObject *old = PyObject_GetAttrString(stats, name);
    if (old == NULL)
        return -1;
    PyObject *add = PyLong_FromSsize_t(n);
    PyObject *sum = add ? PyNumber_Add(old, add) : NULL;
    Py_DECREF(old);
    Py_XDECREF(add);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttrString(stats, name, sum);
    Py_DECREF(sum);
    return rc;
}

static PyObject *
bytes_at(const unsigned char *base, Py_ssize_t start, Py_ssize_t end)
{
    if (end == start) {
        Py_INCREF(EmptyBytes);
        return EmptyBytes;
    }
    return PyBytes_FromStringAndSize((const char *)base + start, end - start);
}

static PyObject *
make_frame(int type, int flags, int seq, PyObject *payload, PyObject *mac, PyObject *signed_)
{
    /* A NamedTuple is a tuple subclass: allocated with its six slots, filled in place. */
    PyObject *frame = ((PyTypeObject *)Frame_cls)->tp_alloc((PyTypeObject *)Frame_cls, 6);
    if (frame == NULL) {
        Py_DECREF(payload);
        Py_DECREF(mac);
        Py_DECREF(signed_);
        return NULL;
    }
    PyTuple_SET_ITEM(frame, 0, PyLong_FromLong(type));
    PyTuple_SET_ITEM(frame, 1, PyLong_FromLong(flags));
    PyTuple_SET_ITEM(frame, 2, PyLong_FromLong(seq));
    PyTuple_SET_ITEM(frame, 3, payload);
    PyTuple_SET_ITEM(frame, 4, mac);
    PyTuple_SET_ITEM(frame, 5, signed_);
    if (PyTuple_GET_ITEM(frame, 0) == NULL || PyTuple_GET_ITEM(frame, 1) == NULL ||
        PyTuple_GET_ITEM(frame, 2) == NULL) {
        Py_DECREF(frame);
        return NULL;
    }
    return frame;
}

/* Where the decoder's next complete frame lies in its buffer: consumed (self->pos moves past
 * it) and the buffer kept, so the offsets stay valid until the next call. */
typedef struct {
    Py_ssize_t pos;            /* its first magic byte */
    Py_ssize_t end_of_payload; /* signed = [pos + 2, end_of_payload) */
    Py_ssize_t end_of_mac;     /* the MAC = [end_of_payload, end_of_mac) when FLAG_MAC */
    int type, flags, seq;
} FrameSpan;

/* Take the next complete frame: 1 and its span; 0 when more bytes are needed (the buffer let
 * go once drained); -1 with an exception (BAD_VERSION, the frame consumed). What resyncing
 * skipped is added to the DecoderStats on every path. */
static int
decoder_take(DecoderObject *self, FrameSpan *span)
{
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(self->buffer);
    Py_ssize_t end = PyBytes_GET_SIZE(self->buffer);
    Py_ssize_t pos = self->pos;
    Py_ssize_t garbage = 0, crc_errors = 0, oversize = 0;
    int result = 0;

    for (;;) {
        Py_ssize_t size = end - pos;
        if (size < 2) {
            if (size == 1 && buf[pos] != MAGIC0) {
                garbage += 1;
                pos = end;
            }
            if (pos == end) { /* drained: let the read go */
                Py_INCREF(EmptyBytes);
                Py_SETREF(self->buffer, EmptyBytes);
                pos = 0;
            }
            self->pos = pos;
            result = 0;
            break;
        }
        if (buf[pos] != MAGIC0 || buf[pos + 1] != MAGIC1) {
            /* Skip to the next magic; keep a trailing first magic byte for the next read. */
            Py_ssize_t index = -1;
            for (Py_ssize_t i = pos + 1; i + 1 < end; i++) {
                const unsigned char *hit = memchr(buf + i, MAGIC0, (size_t)(end - 1 - i));
                if (hit == NULL)
                    break;
                i = hit - buf;
                if (buf[i + 1] == MAGIC1) {
                    index = i;
                    break;
                }
            }
            if (index < 0)
                index = buf[end - 1] == MAGIC0 ? end - 1 : end;
            garbage += index - pos;
            pos = index;
            continue;
        }
        if (size < HEADER_SIZE) {
            self->pos = pos;
            result = 0;
            break;
        }
        int version = buf[pos + 2];
        int flags = buf[pos + 4];
        Py_ssize_t length = (buf[pos + 7] << 8) | buf[pos + 8];
        if (length > MAX_PAYLOAD) {
            oversize += 1;
            garbage += 1;
            pos += 1;
            continue;
        }
        Py_ssize_t end_of_payload = pos + HEADER_SIZE + length;
        Py_ssize_t end_of_mac = (flags & FLAG_MAC) ? end_of_payload + MAC_SIZE : end_of_payload;
        Py_ssize_t total = end_of_mac + CRC_SIZE;
        if (total > end) {
            self->pos = pos;
            result = 0;
            break;
        }
        uint16_t received = (uint16_t)((buf[end_of_mac] << 8) | buf[end_of_mac + 1]);
        if (crc16_modbus(buf + pos + 2, end_of_mac - pos - 2) != received) {
            crc_errors += 1;
            garbage += 1;
            pos += 1;
            continue;
        }
        self->pos = total;
        if (version != VERSION) {
            raise_protocol_error(
                RemoteError, BadVersionCode,
                PyUnicode_FromFormat("protocol version %d is not supported", version));
            result = -1;
            break;
        }
        span->pos = pos;
        span->end_of_payload = end_of_payload;
        span->end_of_mac = end_of_mac;
        span->type = buf[pos + 3];
        span->flags = flags;
        span->seq = (buf[pos + 5] << 8) | buf[pos + 6];
        result = 1;
        break;
    }
    if (garbage | crc_errors | oversize) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb); /* a pending BAD_VERSION survives the counting */
        if (stats_add(self->stats, "garbage_bytes", garbage) < 0 ||
            stats_add(self->stats, "crc_errors", crc_errors) < 0 ||
            stats_add(self->stats, "oversize_lengths", oversize) < 0) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            return -1;
        }
        PyErr_Restore(type, value, tb);
    }
    return result;
}

/* The Frame of a span decoder_take() just gave (its buffer still the decoder's). */
static PyObject *
frame_of_span(DecoderObject *self, const FrameSpan *span)
{
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(self->buffer);
    PyObject *payload = bytes_at(buf, span->pos + HEADER_SIZE, span->end_of_payload);
    if (payload == NULL)
        return NULL;
    if (span->flags & FLAG_MAC) {
        PyObject *mac = bytes_at(buf, span->end_of_payload, span->end_of_mac);
        PyObject *signed_ = bytes_at(buf, span->pos + 2, span->end_of_payload);
        if (mac == NULL || signed_ == NULL) {
            Py_DECREF(payload);
            Py_XDECREF(mac);
            Py_XDECREF(signed_);
            return NULL;
        }
        return make_frame(span->type, span->flags, span->seq, payload, mac, signed_);
    }
    Py_INCREF(Py_None);
    Py_INCREF(EmptyBytes);
    return make_frame(span->type, span->flags, span->seq, payload, Py_None, EmptyBytes);
}

static PyObject *
Decoder_next_frame(DecoderObject *self, PyObject *unused)
{
    FrameSpan span;
    int got = decoder_take(self, &span);
    if (got < 0)
        return NULL;
    if (got == 0)
        Py_RETURN_NONE;
    return frame_of_span(self, &span);
}

static PyObject *Decoder_next_record(DecoderObject *self, PyObject *rx_mac);

static PyObject *
Decoder_buffered(DecoderObject *self, void *closure)
{
    return PyLong_FromSsize_t(PyBytes_GET_SIZE(self->buffer) - self->pos);
}

static PyMethodDef Decoder_methods[] = {
    {"feed", (PyCFunction)Decoder_feed, METH_O, "Add received bytes."},
    {"next_frame", (PyCFunction)Decoder_next_frame, METH_NOARGS,
     "The next complete frame, or None when more bytes are needed."},
    {"next_record", (PyCFunction)Decoder_next_record, METH_O,
     "next_record(rx_mac): the next frame as its Record when it is a MACed msgpack record "
     "that rx_mac verifies and parse_record's common case takes; else as next_frame()."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Decoder_members[] = {
    {"stats", T_OBJECT_EX, offsetof(DecoderObject, stats), READONLY,
     "What the decoder threw away while resyncing (a DecoderStats)."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Decoder_getset[] = {
    {"buffered", (getter)Decoder_buffered, NULL, "Bytes held, not yet a frame.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Decoder_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aquafleet.protocol._speedups.FrameDecoder",
    .tp_basicsize = sizeof(DecoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Resyncing frame decoder (the compiled twin of frames.PyFrameDecoder).",
    .tp_new = Decoder_new,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_traverse = (traverseproc)Decoder_traverse,
    .tp_clear = (inquiry)Decoder_clear,
    .tp_methods = Decoder_methods,
    .tp_members = Decoder_members,
    .tp_getset = Decoder_getset,
};

/* ------------------------------------------------------------------------------ msgpack reader */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Reader;

enum { MP_FAIL = 0, MP_INT, MP_NIL, MP_OTHER };

static int
need(Reader *r, Py_ssize_t n)
{
    return r->end - r->p >= n;
}

static uint64_t
be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Read an integer (any width, signed or not) into *value; MP_FAIL for anything else or a
 * uint64 above INT64_MAX (no known key accepts one: the Python path refuses it). */
static int
read_int(Reader *r, int64_t *value)
{
    if (!need(r, 1))
        return MP_FAIL;
    unsigned char c = *r->p;
    if (c <= 0x7f) {
        r->p += 1;
        *value = c;
        return MP_INT;
    }
    if (c >= 0xe0) {
        r->p += 1;
        *value = (int8_t)c;
        return MP_INT;
    }
    int width;
    int is_signed;
    switch (c) {
    case 0xcc: width = 1; is_signed = 0; break;
    case 0xcd: width = 2; is_signed = 0; break;
    case 0xce: width = 4; is_signed = 0; break;
    case 0xcf: width = 8; is_signed = 0; break;
    case 0xd0: width = 1; is_signed = 1; break;
    case 0xd1: width = 2; is_signed = 1; break;
    case 0xd2: width = 4; is_signed = 1; break;
    case 0xd3: width = 8; is_signed = 1; break;
    default: return MP_FAIL;
    }
    if (!need(r, 1 + width))
        return MP_FAIL;
    uint64_t raw = be(r->p + 1, width);
    r->p += 1 + width;
    if (!is_signed) {
        if (raw > (uint64_t)INT64_MAX)
            return MP_FAIL;
        *value = (int64_t)raw;
    } else {
        switch (width) {
        case 1: *value = (int8_t)raw; break;
        case 2: *value = (int16_t)raw; break;
        case 4: *value = (int32_t)raw; break;
        default: *value = (int64_t)raw; break;
        }
    }
    return MP_INT;
}

/* A known key's value: an integer or nil; anything else fails (the Python path says why). */
static int
read_int_or_nil(Reader *r, int64_t *value)
{
    if (need(r, 1) && *r->p == 0xc0) {
        r->p += 1;
        return MP_NIL;
    }
    return read_int(r, value);
}

/* Step over one value of an unknown key. Only what msgpack decodes without complaint under
 * the Python path's options is stepped over: integers, nil, booleans, floats, binary, and
 * arrays and maps of those. A string (whose UTF-8 the Python path checks) or an extension
 * (which it refuses) fails, and so does deep nesting. */
static int
skip_value(Reader *r, int depth)
{
    if (depth > SKIP_DEPTH || !need(r, 1))
        return MP_FAIL;
    unsigned char c = *r->p;
    uint64_t count;
    int map = 0;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
        r->p += 1;
        return MP_OTHER;
    }
    if ((c >= 0xcc && c <= 0xcf) || (c >= 0xd0 && c <= 0xd3)) {
        int64_t ignored;
        if (c == 0xcf) { /* a uint64 above INT64_MAX is still a fine value to skip */
            if (!need(r, 9))
                return MP_FAIL;
            r->p += 9;
            return MP_OTHER;
        }
        return read_int(r, &ignored) == MP_INT ? MP_OTHER : MP_FAIL;
    }
    switch (c) {
    case 0xca: /* float 32 */
        if (!need(r, 5))
            return MP_FAIL;
        r->p += 5;
        return MP_OTHER;
    case 0xcb: /* float 64 */
        if (!need(r, 9))
            return MP_FAIL;
        r->p += 9;
        return MP_OTHER;
    case 0xc4: case 0xc5: case 0xc6: { /* bin 8/16/32 */
        int width = c == 0xc4 ? 1 : c == 0xc5 ? 2 : 4;
        if (!need(r, 1 + width))
            return MP_FAIL;
        uint64_t n = be(r->p + 1, width);
        if ((uint64_t)(r->end - r->p - 1 - width) < n)
            return MP_FAIL;
        r->p += 1 + width + n;
        return MP_OTHER;
    }
    default:
        break;
    }
    if (c >= 0x90 && c <= 0x9f) {
        count = c & 0x0f;
        r->p += 1;
    } else if (c >= 0x80 && c <= 0x8f) {
        count = c & 0x0f;
        map = 1;
        r->p += 1;
    } else if (c == 0xdc || c == 0xdd || c == 0xde || c == 0xdf) {
        int width = (c == 0xdc || c == 0xde) ? 2 : 4;
        if (!need(r, 1 + width))
            return MP_FAIL;
        count = be(r->p + 1, width);
        map = c >= 0xde;
        r->p += 1 + width;
    } else {
        return MP_FAIL; /* strings, extensions, 0xc1 */
    }
    if (map) {
        /* A map's keys must be hashable for the Python path; integers only, to be sure. */
        for (uint64_t i = 0; i < count; i++) {
            int64_t ignored;
            if (read_int(r, &ignored) != MP_INT || skip_value(r, depth + 1) == MP_FAIL)
                return MP_FAIL;
        }
    } else {
        if (count > (uint64_t)(r->end - r->p)) /* each item takes at least one byte */
            return MP_FAIL;
        for (uint64_t i = 0; i < count; i++)
            if (skip_value(r, depth + 1) == MP_FAIL)
                return MP_FAIL;
    }
    return MP_OTHER;
}

/* ------------------------------------------------------------------------------ parse_record */

enum { F_REC, F_BOOT, F_TS, F_TOTAL, F_EPOCH, F_STATE, F_KIND, F_SEQ, F_SENT, F_COUNT };

#define KEY_MQTT_SEQ 40
#define KEY_MQTT_SENT_MS 41

static PyObject *
long_or_none(int present, int64_t value)
{
    if (!present) {
        Py_INCREF(Py_None);
        return Py_None;
    }
    return PyLong_FromLongLong(value);
}

/* Walk a record's msgpack map and check what messages.record_from_map checks (and, for an MQTT
 * uplink, what mqtt_envelope.envelope_fields checks of keys 40 and 41). 1: all of it holds and
 * value/state are filled; 0: anything else, left to the Python path. */
static int
walk_record(PyObject *payload, long type, int mqtt, int64_t *value, int *state)
{
    Reader r = {(const unsigned char *)PyBytes_AS_STRING(payload),
                (const unsigned char *)PyBytes_AS_STRING(payload) + PyBytes_GET_SIZE(payload)};
    uint64_t count;
    if (!need(&r, 1))
        return 0;
    unsigned char c = *r.p;
    if (c >= 0x80 && c <= 0x8f) {
        count = c & 0x0f;
        r.p += 1;
    } else if (c == 0xde || c == 0xdf) {
        int width = c == 0xde ? 2 : 4;
        if (!need(&r, 1 + width))
            return 0;
        count = be(r.p + 1, width);
        r.p += 1 + width;
    } else {
        return 0;
    }
    int total_key = type == TYPE_TELEMETRY ? KEY_FLOW_TOTAL : KEY_EVENT_FLOW_TOTAL;
    for (int i = 0; i < F_COUNT; i++) {
        value[i] = 0;
        state[i] = 0; /* 0 absent, MP_INT, MP_NIL */
    }
    for (uint64_t i = 0; i < count; i++) {
        int64_t key;
        if (read_int(&r, &key) != MP_INT)
            return 0;
        int field = -1;
        if (key == KEY_REC) field = F_REC;
        else if (key == KEY_BOOT) field = F_BOOT;
        else if (key == KEY_TS) field = F_TS;
        else if (key == total_key) field = F_TOTAL;
        else if (key == KEY_CNT_EPOCH) field = F_EPOCH;
        else if (key == KEY_STATE_BITS) field = F_STATE;
        else if (key == KEY_EVENT_KIND && type == TYPE_EVENT) field = F_KIND;
        else if (key == KEY_MQTT_SEQ && mqtt) field = F_SEQ;
        else if (key == KEY_MQTT_SENT_MS && mqtt) field = F_SENT;
        if (field < 0) {
            if (skip_value(&r, 0) == MP_FAIL)
                return 0;
            continue;
        }
        if (state[field]) /* a repeated key: the Python path keeps the last */
            return 0;
        state[field] = read_int_or_nil(&r, &value[field]);
        if (state[field] == MP_FAIL)
            return 0;
    }
    if (r.p != r.end) /* trailing bytes: the Python path refuses them */
        return 0;
    /* The checks of messages.record_from_map; a failure is the Python path's to report. */
    if (state[F_REC] != MP_INT || value[F_REC] < 1 || (uint64_t)value[F_REC] > U32)
        return 0;
    if (state[F_BOOT] != MP_INT || value[F_BOOT] < 0 || (uint64_t)value[F_BOOT] > U32)
        return 0;
    if (state[F_TS] != MP_INT || value[F_TS] < 0 || (uint64_t)value[F_TS] > U32)
        return 0;
    if (type == TYPE_EVENT &&
        (state[F_KIND] != MP_INT || value[F_KIND] < 1 || value[F_KIND] > (int64_t)U8))
        return 0;
    if (state[F_STATE] == MP_INT && (value[F_STATE] < 0 || (uint64_t)value[F_STATE] > U32))
        return 0;
    if (state[F_EPOCH] == MP_INT && (value[F_EPOCH] < 0 || (uint64_t)value[F_EPOCH] > U32))
        return 0;
    if (state[F_TOTAL] == MP_INT && (value[F_TOTAL] < 0 || value[F_TOTAL] > MAX_COUNTER))
        return 0;
    if (mqtt && (state[F_SEQ] != MP_INT || value[F_SEQ] < 0 || value[F_SEQ] > (int64_t)U16 ||
                 state[F_SENT] != MP_INT || value[F_SENT] < 0 || value[F_SENT] > MAX_COUNTER))
        return 0;
    return 1;
}

/* The Record of a walked payload: frame_type, seq, dup, rec, boot, ts, flow_total_ml,
 * cnt_epoch, event_kind, payload, encoding (msgpack), state_bits. Steals nothing. */
static PyObject *
build_record(PyObject *type_obj, PyObject *seq_obj, int dup, PyObject *payload, long type,
             const int64_t *value, const int *state)
{
    PyObject *record = ((PyTypeObject *)Record_cls)->tp_alloc((PyTypeObject *)Record_cls, 12);
    if (record == NULL)
        return NULL;
    PyObject *dup_obj = dup ? Py_True : Py_False;
    Py_INCREF(type_obj);
    Py_INCREF(seq_obj);
    Py_INCREF(dup_obj);
    Py_INCREF(payload);
    PyTuple_SET_ITEM(record, 0, type_obj);
    PyTuple_SET_ITEM(record, 1, seq_obj);
    PyTuple_SET_ITEM(record, 2, dup_obj);
    PyTuple_SET_ITEM(record, 3, PyLong_FromLongLong(value[F_REC]));
    PyTuple_SET_ITEM(record, 4, PyLong_FromLongLong(value[F_BOOT]));
    PyTuple_SET_ITEM(record, 5, PyLong_FromLongLong(value[F_TS]));
    PyTuple_SET_ITEM(record, 6, long_or_none(state[F_TOTAL] == MP_INT, value[F_TOTAL]));
    PyTuple_SET_ITEM(record, 7, long_or_none(state[F_EPOCH] == MP_INT, value[F_EPOCH]));
    PyTuple_SET_ITEM(record, 8, PyLong_FromLongLong(type == TYPE_EVENT ? value[F_KIND] : 0));
    PyTuple_SET_ITEM(record, 9, payload);
    PyTuple_SET_ITEM(record, 10, PyLong_FromLong(0)); /* msgpack */
    PyTuple_SET_ITEM(record, 11, PyLong_FromLongLong(state[F_STATE] == MP_INT ? value[F_STATE]
                                                                               : -1));
    for (int i = 0; i < 12; i++) {
        if (PyTuple_GET_ITEM(record, i) == NULL) {
            Py_DECREF(record);
            return NULL;
        }
    }
    return record;
}

/* next_record(rx_mac): ServerSession's online path for the common frame, in one call. A MACed
 * msgpack TELEMETRY or EVENT frame whose MAC `rx_mac` verifies and whose payload parse_record's
 * common case takes comes back as its Record: what _handle_online would have appended, and
 * with no Frame, MAC or signed bytes made for it. Every other frame comes back as the Frame
 * next_frame() gives, for the Python path to decide (a wrong MAC is its refusal, not ours);
 * None and exceptions as next_frame(). */
static PyObject *
Decoder_next_record(DecoderObject *self, PyObject *rx_mac)
{
    FrameSpan span;
    if (!ready())
        return NULL;
    int got = decoder_take(self, &span);
    if (got < 0)
        return NULL;
    if (got == 0)
        Py_RETURN_NONE;
    if ((span.type == TYPE_TELEMETRY || span.type == TYPE_EVENT) && (span.flags & FLAG_MAC) &&
        (span.flags & ENCODING_MASK) == 0 && Py_IS_TYPE(rx_mac, &MacKey_Type)) {
        const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(self->buffer);
        unsigned char digest[SHA256_DIGEST_LENGTH];
        mac_compute((MacKeyObject *)rx_mac, buf + span.pos + 2,
                    (size_t)(span.end_of_payload - span.pos - 2), digest);
        if (CRYPTO_memcmp(digest, buf + span.end_of_payload, MAC_SIZE) == 0) {
            int64_t value[F_COUNT];
            int state[F_COUNT];
            PyObject *payload = bytes_at(buf, span.pos + HEADER_SIZE, span.end_of_payload);
            if (payload == NULL)
                return NULL;
            if (walk_record(payload, span.type, 0, value, state)) {
                PyObject *type_obj = PyLong_FromLong(span.type);
                PyObject *seq_obj = PyLong_FromLong(span.seq);
                PyObject *record = NULL;
                if (type_obj != NULL && seq_obj != NULL)
                    record = build_record(type_obj, seq_obj, (span.flags & FLAG_DUP) != 0,
                                          payload, span.type, value, state);
                Py_XDECREF(type_obj);
                Py_XDECREF(seq_obj);
                Py_DECREF(payload);
                return record;
            }
            Py_DECREF(payload);
        }
    }
    return frame_of_span(self, &span);
}


/* parse_record(frame) -> Record | None (see the top of this file). */
static PyObject *
py_parse_record(PyObject *module, PyObject *frame)
{
    int64_t value[F_COUNT];
    int state[F_COUNT];
    if (!ready())
        return NULL;
    if (!PyTuple_Check(frame) || PyTuple_GET_SIZE(frame) < 4) {
        PyErr_SetString(PyExc_TypeError, "parse_record() takes a Frame");
        return NULL;
    }
    PyObject *type_obj = PyTuple_GET_ITEM(frame, 0), *flags_obj = PyTuple_GET_ITEM(frame, 1);
    PyObject *seq_obj = PyTuple_GET_ITEM(frame, 2), *payload = PyTuple_GET_ITEM(frame, 3);
    if (!PyLong_CheckExact(type_obj) || !PyLong_CheckExact(flags_obj) ||
        !PyBytes_CheckExact(payload))
        Py_RETURN_NONE;
    long type = PyLong_AsLong(type_obj), flags = PyLong_AsLong(flags_obj);
    if (type == -1 || flags == -1) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if ((type != TYPE_TELEMETRY && type != TYPE_EVENT) || (flags & ENCODING_MASK) != 0)
        Py_RETURN_NONE; /* CBOR, or not a record: the Python path */
    if (!walk_record(payload, type, 0, value, state))
        Py_RETURN_NONE;
    return build_record(type_obj, seq_obj, (flags & FLAG_DUP) != 0, payload, type, value, state);
}

/* parse_uplink_record(payload, frame_type) -> (seq, sent_ms, Record) | None: an MQTT record
 * uplink's map (msgpack; the envelope byte and tag already taken off) as protocol/mqtt.py's
 * receive_data reads it: keys 40 and 41 by envelope_fields, the record by record_from_map. */
static PyObject *
py_parse_uplink_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t value[F_COUNT];
    int state[F_COUNT];
    if (!ready())
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_uplink_record(payload, frame_type)");
        return NULL;
    }
    PyObject *payload = args[0], *type_obj = args[1];
    if (!PyBytes_CheckExact(payload) || !PyLong_Check(type_obj)) /* FrameType members too */
        Py_RETURN_NONE;
    long type = PyLong_AsLong(type_obj);
    if (type != TYPE_TELEMETRY && type != TYPE_EVENT) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (!walk_record(payload, type, 1, value, state))
        Py_RETURN_NONE;
    PyObject *seq_obj = PyLong_FromLongLong(value[F_SEQ]);
    if (seq_obj == NULL)
        return NULL;
    PyObject *record = build_record(type_obj, seq_obj, 0, payload, type, value, state);
    if (record == NULL) {
        Py_DECREF(seq_obj);
        return NULL;
    }
    PyObject *sent = PyLong_FromLongLong(value[F_SENT]);
    if (sent == NULL) {
        Py_DECREF(seq_obj);
        Py_DECREF(record);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(3, seq_obj, sent, record);
    Py_DECREF(seq_obj);
    Py_DECREF(sent);
    Py_DECREF(record);
    return result;
}

/* ------------------------------------------------------------------------------ telemetry report */

/* A container's element count (array or map, as `map` says); MP_FAIL if it is not one. */
static int
read_count(Reader *r, int map, uint64_t *count)
{
    if (!need(r, 1))
        return MP_FAIL;
    unsigned char c = *r->p;
    unsigned char fix = map ? 0x80 : 0x90, c16 = map ? 0xde : 0xdc, c32 = map ? 0xdf : 0xdd;
    if (c >= fix && c <= fix + 0x0f) {
        *count = c & 0x0f;
        r->p += 1;
        return MP_OTHER;
    }
    if (c != c16 && c != c32)
        return MP_FAIL;
    int width = c == c16 ? 2 : 4;
    if (!need(r, 1 + width))
        return MP_FAIL;
    *count = be(r->p + 1, width);
    r->p += 1 + width;
    return MP_OTHER;
}

/* Key 14: nil, or at most 16 [index u8, work_h u32, power_on_h u32, reset_count u16]. Sets
 * *out to the list (NULL for nil or an empty list: the report keeps None then); MP_FAIL for
 * anything the Python path would refuse or might read differently; -1 on a Python error. */
static int
read_filters(Reader *r, PyObject **out)
{
    static const uint64_t high[4] = {U8, U32, U32, U16};
    uint64_t count, width;
    *out = NULL;
    if (need(r, 1) && *r->p == 0xc0) {
        r->p += 1;
        return MP_NIL;
    }
    if (read_count(r, 0, &count) == MP_FAIL || count > MAX_FILTERS)
        return MP_FAIL;
    if (count == 0)
        return MP_OTHER;
    PyObject *rows = PyList_New((Py_ssize_t)count);
    if (rows == NULL)
        return -1;
    for (uint64_t i = 0; i < count; i++) {
        if (read_count(r, 0, &width) == MP_FAIL || width != 4) {
            Py_DECREF(rows);
            return MP_FAIL;
        }
        PyObject *row = PyList_New(4);
        if (row == NULL) {
            Py_DECREF(rows);
            return -1;
        }
        PyList_SET_ITEM(rows, (Py_ssize_t)i, row);
        for (int j = 0; j < 4; j++) {
            int64_t v;
            if (read_int(r, &v) != MP_INT || v < 0 || (uint64_t)v > high[j]) {
                Py_DECREF(rows);
                return MP_FAIL;
            }
            PyObject *item = PyLong_FromLongLong(v);
            if (item == NULL) {
                Py_DECREF(rows);
                return -1;
            }
            PyList_SET_ITEM(row, j, item);
        }
    }
    *out = rows;
    return MP_OTHER;
}

enum { R_REC, R_BOOT, R_TS, R_TDS_IN, R_TDS_OUT, R_TEMPERATURE, R_FAULTS, R_SIGNAL, R_STATE,
       R_TOTAL, R_EPOCH, R_COUNT };

/* parse_telemetry_report(payload) -> TelemetryReport | None: the common case of
 * messages.py_parse_telemetry_report for a msgpack payload (None: the Python path decides). */
static PyObject *
py_parse_telemetry_report(PyObject *module, PyObject *payload)
{
    static const int64_t low[R_COUNT] = {1, 0, 0, 0, 0, MIN_TEMPERATURE_DC, 0, MIN_SIGNAL, 0, 0, 0};
    static const int64_t high[R_COUNT] = {
        (int64_t)U32, (int64_t)U32, (int64_t)U32, U16, U16, MAX_TEMPERATURE_DC, (int64_t)U32,
        MAX_SIGNAL, (int64_t)U32, MAX_COUNTER, (int64_t)U32};
    if (Report_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup_report() not called");
        return NULL;
    }
    if (!PyBytes_CheckExact(payload))
        Py_RETURN_NONE;
    Reader r = {(const unsigned char *)PyBytes_AS_STRING(payload),
                (const unsigned char *)PyBytes_AS_STRING(payload) + PyBytes_GET_SIZE(payload)};
    uint64_t count;
    if (read_count(&r, 1, &count) == MP_FAIL)
        Py_RETURN_NONE;
    int64_t value[R_COUNT] = {0};
    int state[R_COUNT] = {0};
    int filters_seen = 0;
    PyObject *filters = NULL;
    for (uint64_t i = 0; i < count; i++) {
        int64_t key;
        if (read_int(&r, &key) != MP_INT)
            goto fallback;
        int field;
        switch (key) {
        case KEY_REC: field = R_REC; break;
        case KEY_BOOT: field = R_BOOT; break;
        case KEY_TS: field = R_TS; break;
        case KEY_TDS_IN: field = R_TDS_IN; break;
        case KEY_TDS_OUT: field = R_TDS_OUT; break;
        case KEY_TEMPERATURE: field = R_TEMPERATURE; break;
        case KEY_FAULTS: field = R_FAULTS; break;
        case KEY_SIGNAL: field = R_SIGNAL; break;
        case KEY_STATE_BITS: field = R_STATE; break;
        case KEY_FLOW_TOTAL: field = R_TOTAL; break;
        case KEY_CNT_EPOCH: field = R_EPOCH; break;
        case KEY_FILTERS: field = -2; break;
        default: field = -1; break;
        }
        if (field == -2) {
            if (filters_seen) /* a repeated key: the Python path keeps the last */
                goto fallback;
            filters_seen = 1;
            int got = read_filters(&r, &filters);
            if (got < 0)
                return NULL;
            if (got == MP_FAIL)
                goto fallback;
            continue;
        }
        if (field < 0) {
            if (skip_value(&r, 0) == MP_FAIL)
                goto fallback;
            continue;
        }
        if (state[field])
            goto fallback;
        state[field] = read_int_or_nil(&r, &value[field]);
        if (state[field] == MP_FAIL)
            goto fallback;
        if (state[field] == MP_INT && (value[field] < low[field] || value[field] > high[field]))
            goto fallback;
    }
    if (r.p != r.end || state[R_REC] != MP_INT || state[R_BOOT] != MP_INT ||
        state[R_TS] != MP_INT)
        goto fallback;
    PyObject *report = ((PyTypeObject *)Report_cls)->tp_alloc((PyTypeObject *)Report_cls, 10);
    if (report == NULL) {
        Py_XDECREF(filters);
        return NULL;
    }
    if (filters == NULL) {
        Py_INCREF(Py_None);
        filters = Py_None;
    }
    static const int order[] = {R_REC, R_BOOT, R_TS, R_TDS_IN, R_TDS_OUT, R_TEMPERATURE};
    for (int i = 0; i < 6; i++)
        PyTuple_SET_ITEM(report, i, long_or_none(state[order[i]] == MP_INT, value[order[i]]));
    PyTuple_SET_ITEM(report, 6, filters);
    PyTuple_SET_ITEM(report, 7, long_or_none(state[R_FAULTS] == MP_INT, value[R_FAULTS]));
    PyTuple_SET_ITEM(report, 8, long_or_none(state[R_SIGNAL] == MP_INT, value[R_SIGNAL]));
    PyTuple_SET_ITEM(report, 9, long_or_none(state[R_STATE] == MP_INT, value[R_STATE]));
    for (int i = 0; i < 10; i++) {
        if (PyTuple_GET_ITEM(report, i) == NULL) {
            Py_DECREF(report);
            return NULL;
        }
    }
    return report;
fallback:
    Py_XDECREF(filters);
    Py_RETURN_NONE;
}

static PyObject *
py_setup_report(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup_report(): TelemetryReport must be a tuple type");
        return NULL;
    }
    Py_XSETREF(Report_cls, Py_NewRef(cls));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------ encode_ack */

/* msgpack's smallest encoding of a non-negative integer, as msgpack.Packer writes it. */
static unsigned char *
put_uint(unsigned char *out, uint64_t v)
{
    if (v <= 0x7f) {
        *out++ = (unsigned char)v;
    } else if (v <= 0xff) {
        *out++ = 0xcc;
        *out++ = (unsigned char)v;
    } else if (v <= 0xffff) {
        *out++ = 0xcd;
        *out++ = (unsigned char)(v >> 8);
        *out++ = (unsigned char)v;
    } else if (v <= 0xffffffffu) {
        *out++ = 0xce;
        for (int shift = 24; shift >= 0; shift -= 8)
            *out++ = (unsigned char)(v >> shift);
    } else {
        *out++ = 0xcf;
        for (int shift = 56; shift >= 0; shift -= 8)
            *out++ = (unsigned char)(v >> shift);
    }
    return out;
}

/* An int object in 0..U32 into *v; 0 when it is anything else. */
static int
small_uint(PyObject *obj, uint64_t *v)
{
    if (!PyLong_CheckExact(obj))
        return 0;
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || value < 0 || (unsigned long long)value > U32) {
        PyErr_Clear();
        return 0;
    }
    *v = (uint64_t)value;
    return 1;
}

/* encode_ack(mac_key, tx_seq, encoding_flags, seq, rc, watermark) -> bytes | None:
 * the frame of ServerSession.ack's encode_frame(ACK, tx_seq, msgpack {0: seq, 1: rc[, 2:
 * watermark]}, flags=encoding_flags, mac_key=mac_key), or None when that is not msgpack, the
 * key is not a compiled MacKey (nor None), or a value is not an integer in 0..U32. */
static PyObject *
py_encode_ack(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "encode_ack() takes six arguments");
        return NULL;
    }
    PyObject *key = args[0], *watermark = args[5];
    uint64_t tx_seq, encoding_flags, seq, rc, boot = 0, rec = 0;
    if (key != Py_None && Py_TYPE(key) != &MacKey_Type)
        Py_RETURN_NONE;
    if (!small_uint(args[1], &tx_seq) || !small_uint(args[2], &encoding_flags) ||
        !small_uint(args[3], &seq) || !small_uint(args[4], &rc))
        Py_RETURN_NONE;
    if (tx_seq > U16 || encoding_flags != 0 || seq > U16 || rc > U8)
        Py_RETURN_NONE;
    int has_watermark = watermark != Py_None;
    if (has_watermark) {
        if (!(PyTuple_CheckExact(watermark) || PyList_CheckExact(watermark)) ||
            PySequence_Fast_GET_SIZE(watermark) != 2 ||
            !small_uint(PySequence_Fast_GET_ITEM(watermark, 0), &boot) ||
            !small_uint(PySequence_Fast_GET_ITEM(watermark, 1), &rec))
            Py_RETURN_NONE;
    }
    unsigned char frame[64];
    unsigned char *p = frame + HEADER_SIZE;
    *p++ = has_watermark ? 0x83 : 0x82;
    *p++ = 0x00;
    p = put_uint(p, seq);
    *p++ = 0x01;
    p = put_uint(p, rc);
    if (has_watermark) {
        *p++ = 0x02;
        *p++ = 0x92;
        p = put_uint(p, boot);
        p = put_uint(p, rec);
    }
    Py_ssize_t length = p - frame - HEADER_SIZE;
    int flags = key == Py_None ? 0 : FLAG_MAC;
    frame[0] = MAGIC0;
    frame[1] = MAGIC1;
    frame[2] = VERSION;
    frame[3] = TYPE_ACK;
    frame[4] = (unsigned char)flags;
    frame[5] = (unsigned char)(tx_seq >> 8);
    frame[6] = (unsigned char)tx_seq;
    frame[7] = (unsigned char)(length >> 8);
    frame[8] = (unsigned char)length;
    if (key != Py_None) {
        unsigned char digest[SHA256_DIGEST_LENGTH];
        mac_compute((MacKeyObject *)key, frame + 2, (size_t)(p - frame - 2), digest);
        memcpy(p, digest, MAC_SIZE);
        p += MAC_SIZE;
    }
    uint16_t crc = crc16_modbus(frame + 2, p - frame - 2);
    *p++ = (unsigned char)(crc >> 8);
    *p++ = (unsigned char)crc;
    return PyBytes_FromStringAndSize((const char *)frame, p - frame);
}

/* seal_ack(mac_key, topic, seq, rc, watermark, tx_seq, sent_ms) -> bytes | None: what
 * protocol/mqtt.py's ack queues for an MQTT device: the envelope byte (version 1, msgpack), the
 * map {0: seq, 1: rc[, 2: [boot, rec]], 40: tx_seq, 41: sent_ms} and the 8-byte tag of
 * HMAC(key, topic | envelope byte | map), as seal_topic builds them; None for anything it does
 * not build (a Python MacKey, a value out of range), which the caller then seals in Python. */
static PyObject *
py_seal_ack(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "seal_ack() takes seven arguments");
        return NULL;
    }
    PyObject *key = args[0], *topic = args[1], *watermark = args[4];
    uint64_t seq, rc, tx_seq, boot = 0, rec = 0;
    if (Py_TYPE(key) != &MacKey_Type || !PyBytes_CheckExact(topic))
        Py_RETURN_NONE;
    if (!small_uint(args[2], &seq) || !small_uint(args[3], &rc) || !small_uint(args[5], &tx_seq))
        Py_RETURN_NONE;
    if (seq > U16 || rc > U8 || tx_seq > U16 || !PyLong_CheckExact(args[6]))
        Py_RETURN_NONE;
    int overflow;
    long long sent_ms = PyLong_AsLongLongAndOverflow(args[6], &overflow);
    if (overflow || sent_ms < 0 || sent_ms > MAX_COUNTER) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int has_watermark = watermark != Py_None;
    if (has_watermark) {
        if (!(PyTuple_CheckExact(watermark) || PyList_CheckExact(watermark)) ||
            PySequence_Fast_GET_SIZE(watermark) != 2 ||
            !small_uint(PySequence_Fast_GET_ITEM(watermark, 0), &boot) ||
            !small_uint(PySequence_Fast_GET_ITEM(watermark, 1), &rec))
            Py_RETURN_NONE;
    }
    Py_ssize_t topic_len = PyBytes_GET_SIZE(topic);
    unsigned char body[64];
    unsigned char *p = body;
    *p++ = 0x10; /* envelope byte: version 1, msgpack */
    *p++ = has_watermark ? 0x85 : 0x84;
    *p++ = 0x00;
    p = put_uint(p, seq);
    *p++ = 0x01;
    p = put_uint(p, rc);
    if (has_watermark) {
        *p++ = 0x02;
        *p++ = 0x92;
        p = put_uint(p, boot);
        p = put_uint(p, rec);
    }
    *p++ = 40;
    p = put_uint(p, tx_seq);
    *p++ = 41;
    p = put_uint(p, (uint64_t)sent_ms);
    Py_ssize_t signed_len = p - body;
    PyObject *out = PyBytes_FromStringAndSize(NULL, signed_len + MAC_SIZE);
    if (out == NULL)
        return NULL;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    mac_compute2((MacKeyObject *)key, PyBytes_AS_STRING(topic), (size_t)topic_len, body,
                 (size_t)signed_len, digest);
    memcpy(PyBytes_AS_STRING(out), body, (size_t)signed_len);
    memcpy(PyBytes_AS_STRING(out) + signed_len, digest, MAC_SIZE);
    return out;
}

/* verify_parts(mac_key, head, signed, received): MacKey.verify(head + signed, received)
 * without building the joined bytes (an MQTT tag covers topic | envelope). */
static PyObject *
MacKey_verify_parts(MacKeyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer head, body, received;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "verify_parts(head, signed, received)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &head, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &body, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&head);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &received, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&head);
        PyBuffer_Release(&body);
        return NULL;
    }
    mac_compute2(self, head.buf, (size_t)head.len, body.buf, (size_t)body.len, digest);
    int ok = received.len == MAC_SIZE && CRYPTO_memcmp(digest, received.buf, MAC_SIZE) == 0;
    PyBuffer_Release(&head);
    PyBuffer_Release(&body);
    PyBuffer_Release(&received);
    return PyBool_FromLong(ok);
}

/* ------------------------------------------------------------------------------ ledger rows */

/* A string or binary (raw=True reads both as bytes): its bytes, or MP_FAIL. */
static int
read_raw(Reader *r, const unsigned char **start, Py_ssize_t *len)
{
    if (!need(r, 1))
        return MP_FAIL;
    unsigned char c = *r->p;
    uint64_t n;
    int width;
    if (c >= 0xa0 && c <= 0xbf) {
        n = c & 0x1f;
        width = 0;
    } else if (c == 0xd9 || c == 0xc4) {
        width = 1;
    } else if (c == 0xda || c == 0xc5) {
        width = 2;
    } else if (c == 0xdb || c == 0xc6) {
        width = 4;
    } else {
        return MP_FAIL;
    }
    if (!need(r, 1 + width))
        return MP_FAIL;
    if (width)
        n = be(r->p + 1, width);
    if ((uint64_t)(r->end - r->p - 1 - width) < n)
        return MP_FAIL;
    *start = r->p + 1 + width;
    *len = (Py_ssize_t)n;
    r->p += 1 + width + n;
    return MP_OTHER;
}

#define EVENT_DISPENSE_DONE 1

/* entry_rows(records, received_at, UsageRow) -> (rows, payloaded) | None: gateway/ledger.py
 * _entry_rows of a stream entry's `records` (meter.lua's msgpack array of [did, frame_type,
 * boot, rec, ts, delta, flow_total (-1: none), cnt_epoch (-1: none), event_kind, encoding,
 * payload]). None for anything that is not exactly that (the Python path then decodes it, or
 * buries the entry as poisoned). */
static PyObject *
py_entry_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "entry_rows(records, received_at, UsageRow)");
        return NULL;
    }
    PyObject *records = args[0], *received_at = args[1], *row_cls = args[2];
    if (!PyBytes_CheckExact(records) || !PyType_Check(row_cls) ||
        !PyType_IsSubtype((PyTypeObject *)row_cls, &PyTuple_Type))
        Py_RETURN_NONE;
    Reader r = {(const unsigned char *)PyBytes_AS_STRING(records),
                (const unsigned char *)PyBytes_AS_STRING(records) + PyBytes_GET_SIZE(records)};
    uint64_t count;
    if (read_count(&r, 0, &count) == MP_FAIL || count > (uint64_t)(r.end - r.p))
        Py_RETURN_NONE;
    PyObject *rows = PyList_New(0), *payloaded = PyList_New(0);
    PyObject *row = NULL;
    if (rows == NULL || payloaded == NULL)
        goto error;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t width;
        const unsigned char *did;
        Py_ssize_t did_len;
        const unsigned char *payload;
        Py_ssize_t payload_len;
        int64_t v[9]; /* frame_type, boot, rec, ts, delta, total, epoch, event_kind, encoding */
        if (read_count(&r, 0, &width) == MP_FAIL || width != 11 ||
            read_raw(&r, &did, &did_len) == MP_FAIL)
            goto fallback;
        for (int j = 0; j < 9; j++)
            if (read_int(&r, &v[j]) != MP_INT)
                goto fallback;
        if (read_raw(&r, &payload, &payload_len) == MP_FAIL)
            goto fallback;
        PyObject *did_str = PyUnicode_DecodeUTF8((const char *)did, did_len, "strict");
        if (did_str == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                goto error;
            PyErr_Clear();
            goto fallback;
        }
        row = ((PyTypeObject *)row_cls)->tp_alloc((PyTypeObject *)row_cls, 10);
        if (row == NULL) {
            Py_DECREF(did_str);
            goto error;
        }
        Py_INCREF(received_at);
        PyTuple_SET_ITEM(row, 0, did_str);
        PyTuple_SET_ITEM(row, 1, PyLong_FromLongLong(v[1]));
        PyTuple_SET_ITEM(row, 2, PyLong_FromLongLong(v[2]));
        PyTuple_SET_ITEM(row, 3, PyLong_FromLongLong(v[0]));
        PyTuple_SET_ITEM(row, 4, PyLong_FromLongLong(v[7]));
        PyTuple_SET_ITEM(row, 5, PyLong_FromLongLong(v[3]));
        PyTuple_SET_ITEM(row, 6, received_at);
        PyTuple_SET_ITEM(row, 7, PyLong_FromLongLong(v[4]));
        PyTuple_SET_ITEM(row, 8, long_or_none(v[5] >= 0, v[5]));
        PyTuple_SET_ITEM(row, 9, long_or_none(v[6] >= 0, v[6]));
        for (int j = 0; j < 10; j++)
            if (PyTuple_GET_ITEM(row, j) == NULL)
                goto error;
        /* Out of the collector's sight, as it takes an exact tuple of such values itself at its
         * first visit (it never does for a tuple subclass like UsageRow): a row holds str, int,
         * None and the round's time, none of which can be in a cycle. A transaction holds
         * thousands of rows until its commit, and each young collection meanwhile visited
         * every one of them (docs/architecture.md, "The ledger writer"). */
        if (!PyObject_GC_IsTracked(received_at))
            PyObject_GC_UnTrack(row);
        if (PyList_Append(rows, row) < 0)
            goto error;
        if (v[0] == TYPE_TELEMETRY || (v[0] == TYPE_EVENT && v[7] == EVENT_DISPENSE_DONE)) {
            PyObject *bytes = PyBytes_FromStringAndSize((const char *)payload, payload_len);
            PyObject *enc = bytes ? PyLong_FromLongLong(v[8]) : NULL;
            PyObject *item = enc ? PyTuple_Pack(3, row, enc, bytes) : NULL;
            Py_XDECREF(bytes);
            Py_XDECREF(enc);
            if (item == NULL || PyList_Append(payloaded, item) < 0) {
                Py_XDECREF(item);
                goto error;
            }
            if (!PyObject_GC_IsTracked(row)) /* (row, encoding, payload): no cycle either */
                PyObject_GC_UnTrack(item);
            Py_DECREF(item);
        }
        Py_CLEAR(row);
    }
    if (r.p != r.end) /* msgpack.unpackb refuses trailing bytes: the Python path decides */
        goto fallback;
    PyObject *result = PyTuple_Pack(2, rows, payloaded);
    Py_DECREF(rows);
    Py_DECREF(payloaded);
    return result;
fallback:
    Py_XDECREF(row);
    Py_XDECREF(rows);
    Py_XDECREF(payloaded);
    Py_RETURN_NONE;
error:
    Py_XDECREF(row);
    Py_XDECREF(rows);
    Py_XDECREF(payloaded);
    return NULL;
}

/* ------------------------------------------------------------------------------ MQTT */

#define MQTT_PUBLISH_QOS0 0x30 /* PUBLISH, no DUP, QoS 0, no RETAIN: the bridge's whole uplink */
#define MQTT_MAX_PACKET (64 * 1024)

/* read_publishes(buffer, at, out, Publish) -> at: protocol/mqtt_wire.py PyPacketReader.feed's
 * common case. Appends to `out` a Publish(topic, payload, 0, 0) for each complete, well-formed
 * QoS 0 PUBLISH from `at` on and answers where it stopped: at the first packet that is anything
 * else, incomplete, malformed or larger than MQTT_MAX_PACKET. The Python loop takes that packet
 * and decides it (its errors are the reader's): this function never refuses anything. */
static PyObject *
py_read_publishes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "read_publishes(buffer, at, out, Publish)");
        return NULL;
    }
    PyObject *buffer = args[0], *out = args[2], *cls = args[3];
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred())
        return NULL;
    if (!PyList_Check(out) || !PyType_Check(cls) ||
        !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "read_publishes(bytes, int, list, tuple type)");
        return NULL;
    }
    if (!PyBytes_CheckExact(buffer)) /* a bytearray or a view: the Python path takes it */
        return PyLong_FromSsize_t(at);
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(buffer);
    Py_ssize_t end = PyBytes_GET_SIZE(buffer);
    if (at < 0 || at > end) {
        PyErr_SetString(PyExc_ValueError, "read_publishes: `at` outside the buffer");
        return NULL;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    while (end - at >= 2 && b[at] == MQTT_PUBLISH_QOS0) {
        Py_ssize_t size = 0;
        int head = 0;
        for (int i = 0; i < 4; i++) {
            Py_ssize_t position = at + 1 + i;
            if (position >= end)
                break; /* the length itself is incomplete */
            unsigned char digit = b[position];
            size |= (Py_ssize_t)(digit & 0x7F) << (7 * i);
            if (!(digit & 0x80)) {
                head = i + 2;
                break;
            }
        }
        if (head == 0 || size < 2 || size > MQTT_MAX_PACKET)
            break;
        Py_ssize_t start = at + head, stop = start + size;
        if (stop > end)
            break;
        Py_ssize_t topic_end = start + 2 + (((Py_ssize_t)b[start] << 8) | b[start + 1]);
        if (topic_end > stop)
            break;
        PyObject *topic =
            PyUnicode_DecodeUTF8((const char *)b + start + 2, topic_end - start - 2, "strict");
        if (topic == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                goto error;
            PyErr_Clear();
            break;
        }
        PyObject *payload = PyBytes_FromStringAndSize((const char *)b + topic_end, stop - topic_end);
        PyObject *packet =
            payload == NULL ? NULL : ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 4);
        if (packet == NULL) {
            Py_DECREF(topic);
            Py_XDECREF(payload);
            goto error;
        }
        PyTuple_SET_ITEM(packet, 0, topic);
        PyTuple_SET_ITEM(packet, 1, payload);
        PyTuple_SET_ITEM(packet, 2, Py_NewRef(zero));
        PyTuple_SET_ITEM(packet, 3, Py_NewRef(zero));
        int appended = PyList_Append(out, packet);
        Py_DECREF(packet);
        if (appended < 0)
            goto error;
        at = stop;
    }
    Py_DECREF(zero);
    return PyLong_FromSsize_t(at);
error:
    Py_DECREF(zero);
    return NULL;
}

/* ------------------------------------------------------------------------- pack_meter_group */

/* A growing output buffer for pack_meter_group. */
typedef struct {
    unsigned char *data;
    size_t len, cap;
} OutBuf;

static int
out_reserve(OutBuf *out, size_t more)
{
    if (out->len + more <= out->cap)
        return 1;
    size_t cap = out->cap ? out->cap : 256;
    while (cap < out->len + more)
        cap *= 2;
    unsigned char *data = PyMem_Realloc(out->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    out->data = data;
    out->cap = cap;
    return 1;
}

/* msgpack.Packer's encoding of a signed 64-bit integer (msgpack_pack_real_int64 for values
 * up to 0, the unsigned encoding above). */
static unsigned char *
put_int(unsigned char *p, long long d)
{
    if (d >= 0)
        return put_uint(p, (uint64_t)d);
    if (d >= -32) {
        *p++ = (unsigned char)(int8_t)d;
    } else if (d >= -128) {
        *p++ = 0xd0;
        *p++ = (unsigned char)(int8_t)d;
    } else if (d >= -32768) {
        *p++ = 0xd1;
        *p++ = (unsigned char)((uint16_t)d >> 8);
        *p++ = (unsigned char)(uint16_t)d;
    } else if (d >= -2147483648LL) {
        uint32_t u = (uint32_t)d;
        *p++ = 0xd2;
        for (int shift = 24; shift >= 0; shift -= 8)
            *p++ = (unsigned char)(u >> shift);
    } else {
        uint64_t u = (uint64_t)d;
        *p++ = 0xd3;
        for (int shift = 56; shift >= 0; shift -= 8)
            *p++ = (unsigned char)(u >> shift);
    }
    return p;
}

/* An exact int that fits a long long into *v, or `none_as` for None when none_ok; 0 for
 * anything else (the caller answers None and the Python packer does the round). */
static int
packable_int(PyObject *obj, long long *v, int none_ok, long long none_as)
{
    if (obj == Py_None && none_ok) {
        *v = none_as;
        return 1;
    }
    if (!PyLong_CheckExact(obj))
        return 0;
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (*v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* msgpack's raw (str) header as Packer(use_bin_type=False) writes it, for str and bytes. */
static unsigned char *
put_raw_header(unsigned char *p, size_t n)
{
    if (n < 32) {
        *p++ = (unsigned char)(0xa0 | n);
    } else if (n < 65536) {
        *p++ = 0xda;
        *p++ = (unsigned char)(n >> 8);
        *p++ = (unsigned char)n;
    } else {
        *p++ = 0xdb;
        for (int shift = 24; shift >= 0; shift -= 8)
            *p++ = (unsigned char)(n >> shift);
    }
    return p;
}

static unsigned char *
put_array_header(unsigned char *p, size_t n)
{
    if (n < 16) {
        *p++ = (unsigned char)(0x90 | n);
    } else if (n < 65536) {
        *p++ = 0xdc;
        *p++ = (unsigned char)(n >> 8);
        *p++ = (unsigned char)n;
    } else {
        *p++ = 0xdd;
        for (int shift = 24; shift >= 0; shift -= 8)
            *p++ = (unsigned char)(n >> shift);
    }
    return p;
}

/* Record's fields (protocol/message_types.py), by position. */
#define R_FRAME_TYPE 0
#define R_REC 3
#define R_BOOT 4
#define R_TS 5
#define R_FLOW_TOTAL 6
#define R_CNT_EPOCH 7
#define R_EVENT_KIND 8
#define R_PAYLOAD 9
#define R_ENCODING 10
#define R_STATE_BITS 11
#define R_FIELDS 12

/* Append a str's UTF-8 or a bytes object as a msgpack raw; 0 for anything else. */
static int
out_raw(OutBuf *out, PyObject *obj, int *ok)
{
    const char *data;
    Py_ssize_t n;
    if (PyUnicode_CheckExact(obj)) {
        data = PyUnicode_AsUTF8AndSize(obj, &n);
        if (data == NULL)
            return 0;
    } else if (PyBytes_CheckExact(obj)) {
        data = PyBytes_AS_STRING(obj);
        n = PyBytes_GET_SIZE(obj);
    } else {
        *ok = 0;
        return 1;
    }
    if ((uint64_t)n > U32) {
        *ok = 0;
        return 1;
    }
    if (!out_reserve(out, 5 + (size_t)n))
        return 0;
    unsigned char *p = put_raw_header(out->data + out->len, (size_t)n);
    memcpy(p, data, (size_t)n);
    out->len = (size_t)(p - out->data) + (size_t)n;
    return 1;
}

/* pack_meter_group(prefix, items) -> bytes | None: what gateway/meter.py's MeterScript packs
 * for one shard of a metering round, msgpack.Packer(use_bin_type=False).pack(
 *   [prefix, [[did, frame_type, boot, rec, ts, flow_total_ml or -1, cnt_epoch or -1,
 *              event_kind, encoding, payload, state_bits] for did, r in items]]),
 * byte for byte; None when an item is not (str, Record) with these types (exact ints that fit
 * 64 bits, bytes payload), which the caller then packs in Python. */
static PyObject *
py_pack_meter_group(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pack_meter_group() takes two arguments");
        return NULL;
    }
    PyObject *prefix = args[0], *items = args[1];
    if (!PyList_CheckExact(items) || Record_cls == NULL)
        Py_RETURN_NONE;
    Py_ssize_t count = PyList_GET_SIZE(items);
    OutBuf out = {NULL, 0, 0};
    int ok = 1;
    if (!out_reserve(&out, 64 + (size_t)count * 64))
        return NULL;
    out.data[out.len++] = 0x92;
    if (!out_raw(&out, prefix, &ok))
        goto error;
    if (!ok)
        goto fallback;
    out.len = (size_t)(put_array_header(out.data + out.len, (size_t)count) - out.data);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            goto fallback;
        PyObject *did = PyTuple_GET_ITEM(item, 0), *r = PyTuple_GET_ITEM(item, 1);
        if (Py_TYPE(r) != (PyTypeObject *)Record_cls || PyTuple_GET_SIZE(r) != R_FIELDS ||
            !PyUnicode_CheckExact(did) || !PyBytes_CheckExact(PyTuple_GET_ITEM(r, R_PAYLOAD)))
            goto fallback;
        long long v[9];
        if (!packable_int(PyTuple_GET_ITEM(r, R_FRAME_TYPE), &v[0], 0, 0) ||
            !packable_int(PyTuple_GET_ITEM(r, R_BOOT), &v[1], 0, 0) ||
            !packable_int(PyTuple_GET_ITEM(r, R_REC), &v[2], 0, 0) ||
            !packable_int(PyTuple_GET_ITEM(r, R_TS), &v[3], 0, 0) ||
            !packable_int(PyTuple_GET_ITEM(r, R_FLOW_TOTAL), &v[4], 1, -1) ||
            !packable_int(PyTuple_GET_ITEM(r, R_CNT_EPOCH), &v[5], 1, -1) ||
            !packable_int(PyTuple_GET_ITEM(r, R_EVENT_KIND), &v[6], 0, 0) ||
            !packable_int(PyTuple_GET_ITEM(r, R_ENCODING), &v[7], 0, 0) ||
            !packable_int(PyTuple_GET_ITEM(r, R_STATE_BITS), &v[8], 0, 0))
            goto fallback;
        if (!out_reserve(&out, 1))
            goto error;
        out.data[out.len++] = 0x9b;
        if (!out_raw(&out, did, &ok))
            goto error;
        if (!ok)
            goto fallback;
        if (!out_reserve(&out, 8 * 9))
            goto error;
        unsigned char *p = out.data + out.len;
        for (int k = 0; k < 8; k++)
            p = put_int(p, v[k]);
        out.len = (size_t)(p - out.data);
        if (!out_raw(&out, PyTuple_GET_ITEM(r, R_PAYLOAD), &ok))
            goto error;
        if (!out_reserve(&out, 9))
            goto error;
        out.len = (size_t)(put_int(out.data + out.len, v[8]) - out.data);
    }
    PyObject *result = PyBytes_FromStringAndSize((const char *)out.data, (Py_ssize_t)out.len);
    PyMem_Free(out.data);
    return result;
fallback:
    PyMem_Free(out.data);
    Py_RETURN_NONE;
error:
    PyMem_Free(out.data);
    return NULL;
}

/* ------------------------------------------------------------------------------ module */

static PyObject *
py_setup(PyObject *module, PyObject *args)
{
    PyObject *frame, *record, *stats, *remote, *local, *bad_version, *overflow;
    if (!PyArg_ParseTuple(args, "OOOOOOO:setup", &frame, &record, &stats, &remote, &local,
                          &bad_version, &overflow))
        return NULL;
    if (!PyType_Check(frame) || !PyType_IsSubtype((PyTypeObject *)frame, &PyTuple_Type) ||
        !PyType_Check(record) || !PyType_IsSubtype((PyTypeObject *)record, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup(): Frame and Record must be tuple types");
        return NULL;
    }
    Py_XSETREF(Frame_cls, Py_NewRef(frame));
    Py_XSETREF(Record_cls, Py_NewRef(record));
    Py_XSETREF(Stats_cls, Py_NewRef(stats));
    Py_XSETREF(RemoteError, Py_NewRef(remote));
    Py_XSETREF(LocalError, Py_NewRef(local));
    Py_XSETREF(BadVersionCode, Py_NewRef(bad_version));
    Py_XSETREF(BufferOverflowCode, Py_NewRef(overflow));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"setup", py_setup, METH_VARARGS,
     "setup(Frame, Record, DecoderStats, RemoteProtocolError, LocalProtocolError, "
     "BAD_VERSION, BUFFER_OVERFLOW): the Python types the twins share."},
    {"crc16_modbus", py_crc16_modbus, METH_O, "CRC-16/MODBUS of a bytes-like object."},
    {"parse_record", py_parse_record, METH_O,
     "parse_record(frame) -> Record | None: the common case of messages.parse_record."},
    {"setup_report", py_setup_report, METH_O,
     "setup_report(TelemetryReport): the type parse_telemetry_report builds."},
    {"parse_telemetry_report", py_parse_telemetry_report, METH_O,
     "parse_telemetry_report(payload) -> TelemetryReport | None: a msgpack payload's common "
     "case of messages.parse_telemetry_report."},
    {"parse_uplink_record", (PyCFunction)(void (*)(void))py_parse_uplink_record, METH_FASTCALL,
     "parse_uplink_record(payload, frame_type) -> (seq, sent_ms, Record) | None."},
    {"seal_ack", (PyCFunction)(void (*)(void))py_seal_ack, METH_FASTCALL,
     "seal_ack(mac_key, topic, seq, rc, watermark, tx_seq, sent_ms) -> bytes | None."},
    {"entry_rows", (PyCFunction)(void (*)(void))py_entry_rows, METH_FASTCALL,
     "entry_rows(records, received_at, UsageRow) -> (rows, payloaded) | None."},
    {"read_publishes", (PyCFunction)(void (*)(void))py_read_publishes, METH_FASTCALL,
     "read_publishes(buffer, at, out, Publish) -> at: the QoS 0 PUBLISHes of mqtt_wire's reader."},
    {"pack_meter_group", (PyCFunction)(void (*)(void))py_pack_meter_group, METH_FASTCALL,
     "pack_meter_group(prefix, items) -> bytes | None: a metering round's shard group."},
    {"encode_ack", (PyCFunction)(void (*)(void))py_encode_ack, METH_FASTCALL,
     "encode_ack(mac_key, tx_seq, encoding_flags, seq, rc, watermark) -> bytes | None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aquafleet.protocol._speedups",
    .m_doc = "Compiled twins of the frame codec's hot functions (see protocol/speedups.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    crc_init();
    EmptyBytes = PyBytes_FromStringAndSize(NULL, 0);
    if (EmptyBytes == NULL)
        return NULL;
    if (PyType_Ready(&MacKey_Type) < 0 || PyType_Ready(&Decoder_Type) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "MacKey", (PyObject *)&MacKey_Type) < 0 ||
        PyModule_AddObjectRef(module, "FrameDecoder", (PyObject *)&Decoder_Type) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
