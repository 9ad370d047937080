/* The common case of CustomerState.apply, compiled (features._fold).
 *
 * ``fold_event(state, ev)`` folds one event into a CustomerState exactly as the
 * Python method ``CustomerState.apply_python`` does, for the events that make up
 * nearly all of a log: a new record after the newest one held, or a duplicate of
 * the newest. Anything else (an event about an entity, a record that goes before
 * the newest, a time zone or an event shape not seen before, a wrong customer, a
 * number outside 64 bits) is handed, before anything is changed, to the Python
 * method, which stays the one definition of the fold. tests/test_fold.py folds the
 * same random logs both ways and compares the states.
 *
 * Built by ``python -m features._build`` (``make install``); without it the Python
 * method folds everything.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

static PyObject *g_plans;    /* dict: event class -> (shape, key callable or None, cache) */
static PyObject *g_epochs;   /* dict: tzinfo -> the epoch in that zone */
static PyObject *g_entities; /* frozenset of the entity event classes */
static long long g_day_us, g_longest;
static PyObject *s_applied, *s_duplicate, *s_too_late;
static PyObject *n_customer_id, *n_occurred_at, *n_event_id, *n_balance_minor,
    *n_amount_minor, *n_days_late, *n_score, *n_records, *n_flat, *n_life, *n_floor,
    *n_top, *n_arrays, *n_expire, *n_apply_python, *n_frombytes;
static PyObject *g_one;
static uint32_t crc_table[256];

static uint32_t crc32_of(const unsigned char *s, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++) c = crc_table[(c ^ s[i]) & 0xFFu] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static long long floor_div(long long a, long long b) {
    long long q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

/* an int attribute of an object: a new reference, its value in *out; NULL (an
 * exception set) when it is missing, not an int or wider than 64 bits */
static PyObject *get_int(PyObject *obj, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return NULL;
    if (!PyLong_Check(v)) {
        Py_DECREF(v);
        PyErr_SetString(PyExc_TypeError, "not an int");
        return NULL;
    }
    *out = PyLong_AsLongLong(v);
    if (*out == -1 && PyErr_Occurred()) Py_CLEAR(v);
    return v;
}

static int get_ll(PyObject *obj, PyObject *name, long long *out) {
    PyObject *v = get_int(obj, name, out);
    Py_XDECREF(v);
    return v != NULL;
}

/* The fast path. Returns a new reference to the outcome, NULL with an exception
 * set on an error after the state began to change, or NULL without an exception
 * when the event is the Python method's to fold (nothing changed). */
static PyObject *fast(PyObject *state, PyObject *ev) {
    PyObject *result = NULL, *when = NULL, *delta = NULL, *a = NULL, *b = NULL;
    PyObject *key = NULL, *record = NULL, *records = NULL, *packed = NULL;
    PyObject *life = NULL, *t_obj = NULL, *plan = NULL, *fed = NULL;
    PyObject *type = (PyObject *)Py_TYPE(ev);
    long long v[6];

    int entity = PySet_Contains(g_entities, type);
    if (entity != 0) goto python;
    a = PyObject_GetAttr(ev, n_customer_id);
    if (a == NULL) goto python;
    b = PyObject_GetAttr(state, n_customer_id);
    if (b == NULL) goto python;
    int same = PyObject_RichCompareBool(a, b, Py_EQ);
    Py_CLEAR(a);
    Py_CLEAR(b);
    if (same != 1) goto python;

    /* time: microseconds since the epoch, through the zone's own epoch */
    when = PyObject_GetAttr(ev, n_occurred_at);
    if (when == NULL || !PyDateTime_Check(when)) goto python;
    PyObject *epoch = PyDict_GetItemWithError(g_epochs, PyDateTime_DATE_GET_TZINFO(when));
    if (epoch == NULL) goto python;
    Py_INCREF(epoch); /* held: a zone's utcoffset may run Python code */
    delta = PyNumber_Subtract(when, epoch);
    Py_DECREF(epoch);
    if (delta == NULL || !PyDelta_Check(delta)) goto python;
    long long t = ((long long)PyDateTime_DELTA_GET_DAYS(delta) * 86400LL +
                   PyDateTime_DELTA_GET_SECONDS(delta)) * 1000000LL +
                  PyDateTime_DELTA_GET_MICROSECONDS(delta);
    long long floor_now, top;
    if (!get_ll(state, n_floor, &floor_now) || !get_ll(state, n_top, &top)) goto python;
    if (t < floor_now) {
        result = Py_NewRef(s_too_late);
        goto done;
    }

    /* what the event feeds: its plan, and the plan's cache (filled by Python) */
    plan = Py_XNewRef(PyDict_GetItemWithError(g_plans, type)); /* held, as fed below */
    if (plan == NULL || !PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != 3) goto python;
    long shape = PyLong_AsLong(PyTuple_GET_ITEM(plan, 0));
    PyObject *key_of = PyTuple_GET_ITEM(plan, 1);
    PyObject *cache = PyTuple_GET_ITEM(plan, 2);
    if (shape == -1 && PyErr_Occurred()) goto python;
    key = key_of == Py_None ? Py_NewRef(Py_None) : PyObject_CallOneArg(key_of, ev);
    if (key == NULL) goto python;
    fed = Py_XNewRef(PyDict_GetItemWithError(cache, key));
    if (fed == NULL || !PyTuple_Check(fed) || PyTuple_GET_SIZE(fed) != 3) goto python;
    PyObject *mask = PyTuple_GET_ITEM(fed, 0), *aux = PyTuple_GET_ITEM(fed, 1);
    PyObject *life_feeds = PyTuple_GET_ITEM(fed, 2);
    if (!PyTuple_Check(life_feeds)) goto python;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(life_feeds); j++) { /* (signal, column) */
        PyObject *feed = PyTuple_GET_ITEM(life_feeds, j);
        if (!PyTuple_Check(feed) || PyTuple_GET_SIZE(feed) != 2) goto python;
        long column = PyLong_AsLong(PyTuple_GET_ITEM(feed, 1));
        if (PyErr_Occurred() || column < -2 || column > 5) goto python;
    }

    a = PyObject_GetAttr(ev, n_event_id);
    if (a == NULL || !PyUnicode_Check(a)) goto python;
    Py_ssize_t id_len;
    const char *id = PyUnicode_AsUTF8AndSize(a, &id_len);
    if (id == NULL) goto python;
    uint32_t h = crc32_of((const unsigned char *)id, id_len);
    Py_CLEAR(a);

    /* the record, as in apply_python: (t, balance, hash, mask, value, aux); the
     * event's own int objects where it has them, the 64-bit values beside */
    PyObject *items[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    v[0] = t;
    v[2] = h;
    v[1] = v[4] = v[5] = 0;
    items[3] = Py_NewRef(mask);
    v[3] = PyLong_AsLongLong(mask);
    if (v[3] == -1 && PyErr_Occurred()) goto python_items;
    if (shape == 1 || shape == 2) {
        if (!(items[1] = get_int(ev, n_balance_minor, &v[1]))) goto python_items;
        if (!(items[4] = get_int(ev, n_amount_minor, &v[4]))) goto python_items;
        if (shape == 1) {
            items[5] = Py_NewRef(aux);
            v[5] = PyLong_AsLongLong(aux);
            if (v[5] == -1 && PyErr_Occurred()) goto python_items;
        } else if (!(items[5] = get_int(ev, n_days_late, &v[5]))) {
            goto python_items;
        }
    } else if (shape == 3) {
        if (!(items[4] = get_int(ev, n_score, &v[4]))) goto python_items;
    } else if (shape != 0) {
        goto python_items;
    }
    if (!(items[0] = PyLong_FromLongLong(t)) || !(items[2] = PyLong_FromUnsignedLong(h)))
        goto python_items;
    for (int i = 0; i < 6; i++) {
        if (items[i] == NULL && !(items[i] = PyLong_FromLong(0))) goto python_items;
    }
    record = PyTuple_New(6);
    if (record == NULL) goto python_items;
    for (int i = 0; i < 6; i++) PyTuple_SET_ITEM(record, i, items[i]); /* stolen */
    goto made;
python_items:
    for (int i = 0; i < 6; i++) Py_XDECREF(items[i]);
    goto python;
made:

    records = PyObject_GetAttr(state, n_records);
    if (records == NULL || !PyList_CheckExact(records)) goto python;
    Py_ssize_t held = PyList_GET_SIZE(records);
    if (held > 0) {
        PyObject *last = PyList_GET_ITEM(records, held - 1);
        int after = PyObject_RichCompareBool(record, last, Py_GT);
        if (after < 0) goto python;
        if (!after) {
            int dup = PyObject_RichCompareBool(record, last, Py_EQ);
            if (dup == 1) result = Py_NewRef(s_duplicate);
            goto done_or_python;
        }
    }
    packed = PyBytes_FromStringAndSize((const char *)v, sizeof v);
    if (packed == NULL) goto python;
    life = PyObject_GetAttr(state, n_life);
    if (life == NULL || !PyDict_CheckExact(life)) goto python;

    /* ---- from here on the state changes: an error is raised, not handed over ---- */
    if (PyList_Append(records, record) < 0) goto done;
    PyObject *flat = PyObject_GetAttr(state, n_flat);
    if (flat == NULL) goto done;
    PyObject *r = PyObject_CallMethodOneArg(flat, n_frombytes, packed);
    Py_DECREF(flat);
    if (r == NULL) goto done;
    Py_DECREF(r);
    if (PyObject_SetAttr(state, n_arrays, Py_None) < 0) goto done;
    t_obj = PyTuple_GET_ITEM(record, 0);
    Py_ssize_t feeds = PyTuple_GET_SIZE(life_feeds);
    for (Py_ssize_t j = 0; j < feeds; j++) {
        PyObject *feed = PyTuple_GET_ITEM(life_feeds, j);
        long column = PyLong_AsLong(PyTuple_GET_ITEM(feed, 1));
        if (column == -1 && PyErr_Occurred()) goto done;
        PyObject *n = column >= 0 ? PyTuple_GET_ITEM(record, column) : PyLong_FromLong(column + 2);
        if (column >= 0) Py_INCREF(n);
        if (n == NULL) goto done;
        PyObject *signal = PyTuple_GET_ITEM(feed, 0);
        PyObject *rec = PyDict_GetItemWithError(life, signal);
        int bad = 0;
        if (rec == NULL) {
            if (PyErr_Occurred()) bad = 1;
            else {
                PyObject *fresh = PyList_New(5);
                if (fresh == NULL) bad = 1;
                else {
                    PyObject *items[5] = {NULL, n, t_obj, t_obj, n};
                    items[0] = PyLong_FromLong(1);
                    if (items[0] == NULL) bad = 1;
                    for (int i = 0; i < 5; i++) {
                        PyList_SET_ITEM(fresh, i, items[i]);
                        if (i) Py_INCREF(items[i]);
                    }
                    if (!bad && PyDict_SetItem(life, signal, fresh) < 0) bad = 1;
                    Py_DECREF(fresh);
                }
            }
        } else if (!PyList_CheckExact(rec) || PyList_GET_SIZE(rec) != 5) {
            PyErr_SetString(PyExc_TypeError, "a lifetime record is not a list of five");
            bad = 1;
        } else {
            /* count += 1; sum += n; the first and the last time; the last value */
            PyObject *count = PyNumber_Add(PyList_GET_ITEM(rec, 0), g_one);
            PyObject *sum = count ? PyNumber_Add(PyList_GET_ITEM(rec, 1), n) : NULL;
            if (sum == NULL) {
                Py_XDECREF(count);
                bad = 1;
            } else {
                PyList_SetItem(rec, 0, count);
                PyList_SetItem(rec, 1, sum);
                long long first = PyLong_AsLongLong(PyList_GET_ITEM(rec, 2));
                long long last_t = PyLong_AsLongLong(PyList_GET_ITEM(rec, 3));
                if (PyErr_Occurred()) bad = 1;
                else {
                    if (t < first) PyList_SetItem(rec, 2, Py_NewRef(t_obj));
                    int later = t > last_t;
                    if (!later && t == last_t) {
                        later = PyObject_RichCompareBool(n, PyList_GET_ITEM(rec, 4), Py_GT);
                        if (later < 0) bad = 1;
                    }
                    if (later == 1) {
                        PyList_SetItem(rec, 3, Py_NewRef(t_obj));
                        PyList_SetItem(rec, 4, Py_NewRef(n));
                    }
                }
            }
        }
        Py_DECREF(n);
        if (bad) goto done;
    }
    if (t > top) {
        if (PyObject_SetAttr(state, n_top, t_obj) < 0) goto done;
        long long floor_new = (floor_div(t, g_day_us) - g_longest + 1) * g_day_us;
        if (floor_new > floor_now) {
            PyObject *f = PyLong_FromLongLong(floor_new);
            if (f == NULL) goto done;
            int set = PyObject_SetAttr(state, n_floor, f);
            Py_DECREF(f);
            if (set < 0) goto done;
            PyObject *first_record = PyList_GET_ITEM(records, 0);
            if (!PyTuple_Check(first_record) || PyTuple_GET_SIZE(first_record) != 6) {
                PyErr_SetString(PyExc_TypeError, "a record is not a tuple of six");
                goto done;
            }
            PyObject *oldest = PyTuple_GET_ITEM(first_record, 0);
            long long oldest_t = PyLong_AsLongLong(oldest);
            if (oldest_t == -1 && PyErr_Occurred()) goto done;
            if (oldest_t < floor_new) {
                PyObject *e = PyObject_CallMethodNoArgs(state, n_expire);
                if (e == NULL) goto done;
                Py_DECREF(e);
            }
        }
    }
    result = Py_NewRef(s_applied);
    goto done;

done_or_python:
    if (result != NULL) goto done;
python:
    PyErr_Clear();
    result = NULL;
done:
    Py_XDECREF(when);
    Py_XDECREF(delta);
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(key);
    Py_XDECREF(record);
    Py_XDECREF(records);
    Py_XDECREF(packed);
    Py_XDECREF(life);
    Py_XDECREF(plan);
    Py_XDECREF(fed);
    return result;
}

static PyObject *fold_event(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fold_event(state, event) takes two arguments");
        return NULL;
    }
    if (g_plans == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "features._fold is not configured");
        return NULL;
    }
    PyObject *out = fast(args[0], args[1]);
    if (out != NULL || PyErr_Occurred()) return out;
    return PyObject_CallMethodOneArg(args[0], n_apply_python, args[1]);
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *plans, *epochs, *entities, *outcomes;
    long long day_us, longest;
    if (!PyArg_ParseTuple(args, "O!O!O!LLO!", &PyDict_Type, &plans, &PyDict_Type, &epochs,
                          &PyFrozenSet_Type, &entities, &day_us, &longest, &PyTuple_Type,
                          &outcomes))
        return NULL;
    if (PyTuple_GET_SIZE(outcomes) != 3 || day_us <= 0) {
        PyErr_SetString(PyExc_ValueError, "configure: three outcomes and a positive day");
        return NULL;
    }
    Py_XSETREF(g_plans, Py_NewRef(plans));
    Py_XSETREF(g_epochs, Py_NewRef(epochs));
    Py_XSETREF(g_entities, Py_NewRef(entities));
    Py_XSETREF(s_applied, Py_NewRef(PyTuple_GET_ITEM(outcomes, 0)));
    Py_XSETREF(s_duplicate, Py_NewRef(PyTuple_GET_ITEM(outcomes, 1)));
    Py_XSETREF(s_too_late, Py_NewRef(PyTuple_GET_ITEM(outcomes, 2)));
    g_day_us = day_us;
    g_longest = longest;
    Py_RETURN_NONE;
}

static PyObject *crc32_py(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t h = crc32_of((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(h);
}

static PyMethodDef methods[] = {
    {"fold_event", (PyCFunction)(void (*)(void))fold_event, METH_FASTCALL,
     "fold_event(state, event) -> outcome: CustomerState.apply, compiled for the common case"},
    {"configure", configure, METH_VARARGS, "set the plans, epochs and constants (features._state)"},
    {"crc32", crc32_py, METH_O, "CRC-32 of bytes, as zlib.crc32 (the record's id hash)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "features._fold", NULL, -1,
                                        methods};

PyMODINIT_FUNC PyInit__fold(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    g_one = PyLong_FromLong(1);
    if (g_one == NULL) return NULL;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&n_customer_id, "customer_id"}, {&n_occurred_at, "occurred_at"},
        {&n_event_id, "event_id"},       {&n_balance_minor, "balance_minor"},
        {&n_amount_minor, "amount_minor"}, {&n_days_late, "days_late"},
        {&n_score, "score"},             {&n_records, "records"},
        {&n_flat, "_flat"},              {&n_life, "life"},
        {&n_floor, "_floor"},            {&n_top, "_top"},
        {&n_arrays, "_arrays"},          {&n_expire, "_expire"},
        {&n_apply_python, "apply_python"}, {&n_frombytes, "frombytes"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL) return NULL;
    }
    return PyModule_Create(&module_def);
}
