/*
 * An org.qemu.VMState1 helper written on systemd's sd-bus.
 *
 *   sdbus_helper ADDRESS ID SIZE SEED [bus]
 *
 * Peer to peer (default): sd_bus_set_address + sd_bus_start with
 * bus_client off, so no Hello; serves /org/qemu/VMState1.
 *
 * Bus style ("bus"): sd_bus_set_bus_client, so sd-bus sends Hello as to a
 * message bus, then sd_bus_request_name("org.qemu.VMState1").
 *
 * The state starts as SIZE bytes of the test pattern (byte i is
 * (i % 251 + SEED) mod 256). Exits 0 when the peer closes the connection,
 * 1 on any error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>

static const char *helper_id;
static uint8_t *state;
static size_t state_len;

static int fail(const char *what, int r) {
    fprintf(stderr, "sdbus_helper: %s: %s\n", what, strerror(-r));
    return 1;
}

static int method_save(sd_bus_message *m, void *userdata, sd_bus_error *error) {
    sd_bus_message *reply = NULL;
    int r = sd_bus_message_new_method_return(m, &reply);
    if (r < 0)
        return r;
    /* An empty array needs a valid pointer too. */
    r = sd_bus_message_append_array(reply, 'y', state_len ? (void *)state : (void *)"", state_len);
    if (r >= 0)
        r = sd_bus_send(NULL, reply, NULL);
    sd_bus_message_unref(reply);
    return r;
}

static int method_load(sd_bus_message *m, void *userdata, sd_bus_error *error) {
    const void *data = NULL;
    size_t len = 0;
    int r = sd_bus_message_read_array(m, 'y', &data, &len);
    if (r < 0)
        return r;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return -ENOMEM;
    if (len)
        memcpy(copy, data, len);
    free(state);
    state = copy;
    state_len = len;
    return sd_bus_reply_method_return(m, NULL);
}

static int property_id(sd_bus *bus, const char *path, const char *interface,
                       const char *property, sd_bus_message *reply, void *userdata,
                       sd_bus_error *error) {
    return sd_bus_message_append(reply, "s", helper_id);
}

static const sd_bus_vtable vmstate_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Id", "s", property_id, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_METHOD_WITH_ARGS("Load", SD_BUS_ARGS("ay", data), SD_BUS_NO_RESULT, method_load, 0),
    SD_BUS_METHOD_WITH_ARGS("Save", SD_BUS_NO_ARGS, SD_BUS_RESULT("ay", data), method_save, 0),
    SD_BUS_VTABLE_END,
};

int main(int argc, char **argv) {
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: %s ADDRESS ID SIZE SEED [bus]\n", argv[0]);
        return 2;
    }
    const char *address = argv[1];
    helper_id = argv[2];
    state_len = strtoull(argv[3], NULL, 10);
    unsigned seed = (unsigned)strtoul(argv[4], NULL, 10);
    int bus_style = argc == 6 && strcmp(argv[5], "bus") == 0;

    state = malloc(state_len ? state_len : 1);
    if (!state)
        return fail("malloc", -ENOMEM);
    for (size_t i = 0; i < state_len; i++)
        state[i] = (uint8_t)(i % 251 + seed);

    sd_bus *bus = NULL;
    int r = sd_bus_new(&bus);
    if (r < 0)
        return fail("sd_bus_new", r);
    if ((r = sd_bus_set_address(bus, address)) < 0)
        return fail("sd_bus_set_address", r);
    if ((r = sd_bus_set_bus_client(bus, bus_style)) < 0)
        return fail("sd_bus_set_bus_client", r);
    if ((r = sd_bus_negotiate_fds(bus, 1)) < 0)
        return fail("sd_bus_negotiate_fds", r);
    if ((r = sd_bus_add_object_vtable(bus, NULL, "/org/qemu/VMState1", "org.qemu.VMState1",
                                      vmstate_vtable, NULL)) < 0)
        return fail("sd_bus_add_object_vtable", r);
    if ((r = sd_bus_start(bus)) < 0)
        return fail("sd_bus_start", r);
    if (bus_style) {
        const char *unique = NULL;
        if ((r = sd_bus_get_unique_name(bus, &unique)) < 0)
            return fail("sd_bus_get_unique_name", r);
        fprintf(stderr, "sdbus_helper: unique name %s\n", unique);
        if ((r = sd_bus_request_name(bus, "org.qemu.VMState1", 0)) < 0)
            return fail("sd_bus_request_name", r);
        fprintf(stderr, "sdbus_helper: owns org.qemu.VMState1\n");
    }

    for (;;) {
        r = sd_bus_process(bus, NULL);
        if (r == -ECONNRESET || r == -ENOTCONN)
            break;
        if (r < 0)
            return fail("sd_bus_process", r);
        if (r > 0)
            continue;
        r = sd_bus_wait(bus, UINT64_MAX);
        if (r == -ECONNRESET || r == -ENOTCONN)
            break;
        if (r < 0)
            return fail("sd_bus_wait", r);
    }
    sd_bus_flush_close_unref(bus);
    free(state);
    return 0;
}
