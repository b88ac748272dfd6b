/*
 * The well-formed common case of lamina.core.layertar.reader's header parser, in C.
 *
 * Why: parsing headers is most of the Python time of a layer apply (a pax
 * header and a ustar header per entry, ~12 us in Python, ~1 us here). This
 * module handles only entries it is sure about and answers None for anything
 * else; the Python parser then reads the same bytes and decides, so every
 * error, every limit and every rare format (sparse files, base-256 numbers,
 * global headers, volume labels, odd pax records) has one implementation, in
 * tarstream.py. tests/test_tarfast.py holds the two equal on generated and
 * mutated headers.
 *
 * next_entry(buf, pos, max_path_short, max_pax) -> None or a tuple
 *   (kind, path, mode, uid, gid, data_size, mtime_ns, linkname, devmajor,
 *    devminor, xattrs or None, data_pos)
 * buf: the read buffer, pos: where the entry's first header starts in it.
 * kind: an index into tarstream._FAST_KINDS. data_size: the bytes of content
 * that follow at data_pos (0 for entries without content).
 * Every access is bounds-checked against the buffer's length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512

enum { K_FILE, K_DIR, K_SYMLINK, K_HARDLINK, K_CHAR, K_BLOCK, K_FIFO };

/* A numeric header field as tarstream._parse_number reads it: up to the first
 * NUL, spaces stripped at both ends, octal digits only; empty is 0. Returns 0 on
 * success, -1 for anything else (base-256, junk): then Python decides. */
static int
octal_field(const unsigned char *p, Py_ssize_t len, int64_t *out)
{
    Py_ssize_t end = 0;
    while (end < len && p[end] != 0)
        end++;
    Py_ssize_t start = 0;
    if (len > 0 && (p[0] & 0x80))
        return -1; /* base-256 */
    while (start < end && p[start] == ' ')
        start++;
    while (end > start && p[end - 1] == ' ')
        end--;
    int64_t value = 0;
    if (end - start > 21)
        return -1;
    for (Py_ssize_t i = start; i < end; i++) {
        if (p[i] < '0' || p[i] > '7')
            return -1;
        value = value * 8 + (p[i] - '0');
    }
    *out = value;
    return 0;
}

/* Decimal digits only, 1..18 of them (no overflow); -1 otherwise. */
static int
decimal(const unsigned char *p, Py_ssize_t len, int64_t *out)
{
    if (len < 1 || len > 18)
        return -1;
    int64_t value = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        value = value * 10 + (p[i] - '0');
    }
    *out = value;
    return 0;
}

/* A pax time "seconds[.fraction]" in ns, truncated; negative times go to Python. */
static int
pax_time_ns(const unsigned char *p, Py_ssize_t len, int64_t *out)
{
    Py_ssize_t dot = 0;
    while (dot < len && p[dot] != '.')
        dot++;
    int64_t seconds;
    if (decimal(p, dot, &seconds) < 0 || seconds > 9000000000LL)
        return -1;
    int64_t fraction = 0;
    Py_ssize_t digits = 0;
    for (Py_ssize_t i = dot + 1; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        if (digits < 9) {
            fraction = fraction * 10 + (p[i] - '0');
            digits++;
        }
    }
    while (digits < 9) {
        fraction *= 10;
        digits++;
    }
    *out = seconds * 1000000000LL + fraction;
    return 0;
}

/* The bytes up to the first NUL of a field. */
static Py_ssize_t
cstr_len(const unsigned char *p, Py_ssize_t len)
{
    const unsigned char *nul = memchr(p, 0, (size_t)len);
    return nul ? (Py_ssize_t)(nul - p) : len;
}

/* The header's checksum holds (over unsigned bytes, the field counted as spaces). */
static int
checksum_ok(const unsigned char *h)
{
    int64_t want;
    if (octal_field(h + 148, 8, &want) < 0)
        return 0;
    /* an empty field is 0 for Python too, which then compares: let Python do it */
    if (cstr_len(h + 148, 8) == 0)
        return 0;
    int64_t sum = 8 * ' ';
    for (int i = 0; i < 148; i++)
        sum += h[i];
    for (int i = 156; i < BLOCK; i++)
        sum += h[i];
    return sum == want;
}

static int
all_zero(const unsigned char *h)
{
    for (int i = 0; i < BLOCK; i++)
        if (h[i])
            return 0;
    return 1;
}

struct pax {
    const unsigned char *path, *linkpath, *size, *uid, *gid, *mtime;
    Py_ssize_t path_len, linkpath_len, size_len, uid_len, gid_len, mtime_len;
    PyObject *xattrs; /* dict or NULL */
};

static int
key_is(const unsigned char *key, Py_ssize_t len, const char *name)
{
    size_t n = strlen(name);
    return (size_t)len == n && memcmp(key, name, n) == 0;
}

/* Records of one pax header into *pax; 1 when all were understood, 0 when
 * Python must look (malformed, unknown keys that matter), -1 on a Python error. */
static int
pax_records(const unsigned char *data, Py_ssize_t end, struct pax *pax)
{
    Py_ssize_t pos = 0;
    while (pos < end) {
        Py_ssize_t space = pos;
        while (space < end && space < pos + 21 && data[space] >= '0' && data[space] <= '9')
            space++;
        if (space == pos || space >= end || data[space] != ' ')
            return 0;
        int64_t length;
        if (decimal(data + pos, space - pos, &length) < 0)
            return 0;
        if (length < space - pos + 4 || length > end - pos)
            return 0;
        Py_ssize_t stop = pos + (Py_ssize_t)length;
        if (data[stop - 1] != '\n')
            return 0;
        const unsigned char *key = data + space + 1;
        const unsigned char *eq = memchr(key, '=', (size_t)(stop - (space + 1)));
        if (eq == NULL || eq == key)
            return 0;
        Py_ssize_t key_len = eq - key;
        const unsigned char *value = eq + 1;
        Py_ssize_t value_len = (data + stop - 1) - value;
        if (key_is(key, key_len, "path")) {
            pax->path = value;
            pax->path_len = value_len;
        } else if (key_is(key, key_len, "linkpath")) {
            pax->linkpath = value;
            pax->linkpath_len = value_len;
        } else if (key_is(key, key_len, "size")) {
            pax->size = value;
            pax->size_len = value_len;
        } else if (key_is(key, key_len, "uid")) {
            pax->uid = value;
            pax->uid_len = value_len;
        } else if (key_is(key, key_len, "gid")) {
            pax->gid = value;
            pax->gid_len = value_len;
        } else if (key_is(key, key_len, "mtime")) {
            pax->mtime = value;
            pax->mtime_len = value_len;
        } else if (key_is(key, key_len, "atime") || key_is(key, key_len, "ctime") ||
                   key_is(key, key_len, "uname") || key_is(key, key_len, "gname") ||
                   key_is(key, key_len, "comment") || key_is(key, key_len, "charset") ||
                   key_is(key, key_len, "hdrcharset")) {
            /* read and ignored, as in Python */
        } else if (key_len > 13 && memcmp(key, "SCHILY.xattr.", 13) == 0) {
            PyObject *name = PyUnicode_DecodeUTF8((const char *)key + 13, key_len - 13, NULL);
            if (name == NULL) {
                PyErr_Clear(); /* not UTF-8: Python says so */
                return 0;
            }
            PyObject *raw = PyBytes_FromStringAndSize((const char *)value, value_len);
            if (raw == NULL) {
                Py_DECREF(name);
                return -1;
            }
            if (pax->xattrs == NULL && (pax->xattrs = PyDict_New()) == NULL) {
                Py_DECREF(name);
                Py_DECREF(raw);
                return -1;
            }
            int failed = PyDict_SetItem(pax->xattrs, name, raw);
            Py_DECREF(name);
            Py_DECREF(raw);
            if (failed)
                return -1;
        } else {
            return 0; /* sparse maps, LIBARCHIVE.xattr, keys Python ignores: Python */
        }
        pos = stop;
    }
    return 1;
}

/* A path Python would accept without its careful checks: short and NUL-free. */
static PyObject *
short_path(const unsigned char *p, Py_ssize_t len, Py_ssize_t max_short)
{
    if (len < 1 || len > max_short || memchr(p, 0, (size_t)len) != NULL)
        return NULL;
    return PyUnicode_DecodeUTF8((const char *)p, len, "surrogateescape");
}

static PyObject *
next_entry(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, max_short, max_pax;
    if (!PyArg_ParseTuple(args, "y*nnn", &view, &pos, &max_short, &max_pax))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t n = view.len;
    PyObject *result = NULL, *path = NULL, *link = NULL;
    struct pax pax;
    memset(&pax, 0, sizeof pax);
    const unsigned char *longname = NULL, *longlink = NULL;
    Py_ssize_t longname_len = 0, longlink_len = 0;

    for (;;) {
        if (pos < 0 || pos > n - BLOCK)
            goto python;
        const unsigned char *h = buf + pos;
        if (all_zero(h) || !checksum_ok(h))
            goto python;
        int64_t size;
        if (octal_field(h + 124, 12, &size) < 0)
            goto python;
        unsigned char typeflag = h[156];
        if (typeflag == 'x' || typeflag == 'X' || typeflag == 'L' || typeflag == 'K') {
            if (size > max_pax || size > n - pos - BLOCK)
                goto python;
            const unsigned char *data = h + BLOCK;
            if (typeflag == 'L') {
                longname = data;
                longname_len = cstr_len(data, (Py_ssize_t)size);
            } else if (typeflag == 'K') {
                longlink = data;
                longlink_len = cstr_len(data, (Py_ssize_t)size);
            } else {
                int got = pax_records(data, (Py_ssize_t)size, &pax);
                if (got < 0)
                    goto error;
                if (got == 0)
                    goto python;
            }
            pos += BLOCK + (Py_ssize_t)((size + BLOCK - 1) / BLOCK * BLOCK);
            continue;
        }

        int kind;
        switch (typeflag) {
        case '0': case '\0': case '7': kind = K_FILE; break;
        case '1': kind = K_HARDLINK; break;
        case '2': kind = K_SYMLINK; break;
        case '3': kind = K_CHAR; break;
        case '4': kind = K_BLOCK; break;
        case '5': kind = K_DIR; break;
        case '6': kind = K_FIFO; break;
        default: goto python; /* sparse, GNU dump dirs, volume labels, unknown */
        }
        int64_t mode, uid, gid, mtime_ns, devmajor = 0, devminor = 0;
        if (octal_field(h + 100, 8, &mode) < 0 || octal_field(h + 108, 8, &uid) < 0 ||
            octal_field(h + 116, 8, &gid) < 0)
            goto python;
        if (pax.mtime != NULL) {
            if (pax_time_ns(pax.mtime, pax.mtime_len, &mtime_ns) < 0)
                goto python;
        } else {
            int64_t seconds;
            if (octal_field(h + 136, 12, &seconds) < 0 || seconds > 9000000000LL)
                goto python; /* 12 octal digits overflow nanoseconds: Python's ints do not */
            mtime_ns = seconds * 1000000000LL;
        }
        if (kind == K_CHAR || kind == K_BLOCK) {
            if (octal_field(h + 329, 8, &devmajor) < 0 || octal_field(h + 337, 8, &devminor) < 0)
                goto python;
        }
        if (pax.size != NULL && decimal(pax.size, pax.size_len, &size) < 0)
            goto python;
        if (pax.uid != NULL && decimal(pax.uid, pax.uid_len, &uid) < 0)
            goto python;
        if (pax.gid != NULL && decimal(pax.gid, pax.gid_len, &gid) < 0)
            goto python;

        /* the name: pax path > GNU long name > ustar prefix/name */
        unsigned char joined[256 + 1 + 100];
        const unsigned char *name;
        Py_ssize_t name_len;
        if (pax.path != NULL) {
            name = pax.path;
            name_len = pax.path_len;
        } else if (longname != NULL) {
            name = longname;
            name_len = longname_len;
        } else {
            name = h;
            name_len = cstr_len(h, 100);
            if (h[345] != 0 && memcmp(h + 257, "ustar\0", 6) == 0) {
                Py_ssize_t prefix_len = cstr_len(h + 345, 155);
                memcpy(joined, h + 345, (size_t)prefix_len);
                joined[prefix_len] = '/';
                memcpy(joined + prefix_len + 1, h, (size_t)name_len);
                name = joined;
                name_len += prefix_len + 1;
            }
        }
        if (typeflag == '\0' && name_len > 0 && name[name_len - 1] == '/')
            kind = K_DIR; /* v7 marks directories by a trailing slash */
        path = short_path(name, name_len, max_short);
        if (path == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto python;
        }
        if (kind == K_SYMLINK || kind == K_HARDLINK) {
            const unsigned char *target;
            Py_ssize_t target_len;
            if (pax.linkpath != NULL) {
                target = pax.linkpath;
                target_len = pax.linkpath_len;
            } else if (longlink != NULL) {
                target = longlink;
                target_len = longlink_len;
            } else {
                target = h + 157;
                target_len = cstr_len(h + 157, 100);
            }
            link = short_path(target, target_len, max_short);
            if (link == NULL) {
                if (PyErr_Occurred())
                    goto error;
                goto python;
            }
        } else {
            link = PyUnicode_New(0, 0);
            if (link == NULL)
                goto error;
        }
        if (kind != K_FILE)
            size = 0; /* the size field of other kinds is ignored, as Go reads */
        Py_ssize_t data_pos = pos + BLOCK;
        result = Py_BuildValue(
            "(iNLLLLLNLLOn)", kind, path, (long long)(mode & 07777), (long long)uid,
            (long long)gid, (long long)size, (long long)mtime_ns, link, (long long)devmajor,
            (long long)devminor, pax.xattrs ? pax.xattrs : Py_None, data_pos);
        path = link = NULL; /* stolen by N */
        goto done;
    }

python:
    result = Py_None;
    Py_INCREF(result);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(path);
    Py_XDECREF(link);
    Py_XDECREF(pax.xattrs);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"next_entry", next_entry, METH_VARARGS,
     "The next entry's fields when its headers are plainly well-formed, else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_tarfast",
    "The common case of lamina.core.layertar.reader's header parser, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__tarfast(void)
{
    return PyModule_Create(&module);
}
