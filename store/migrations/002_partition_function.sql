-- gridwatch results store, version 2: which worker partition an area is in, for the area
-- dashboard's `worker` variable (docs/store.md, "Grafana").
--
-- The worker reads an area's readings from one partition: Kafka's default partitioner of the
-- key (the area id's UTF-8 bytes), murmur2 made positive, modulo the topic's partitions
-- (streams.topology_feed.area_partition). These functions compute the same number in SQL;
-- tests/store/test_store_partition.py checks them against the Python partitioner key by key.
-- All arithmetic on 32-bit values held in bigint (a product of two 32-bit values fits).

CREATE FUNCTION gridwatch_murmur2(data bytea) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    m constant bigint := 1540483477;  -- 0x5bd1e995
    n constant integer := length(data);
    h bigint := 2538058380 # n;        -- seed 0x9747b28c xor the length
    k bigint;
    i integer := 0;
BEGIN
    WHILE i + 4 <= n LOOP
        k := get_byte(data, i)::bigint | (get_byte(data, i + 1)::bigint << 8)
             | (get_byte(data, i + 2)::bigint << 16) | (get_byte(data, i + 3)::bigint << 24);
        k := (k * m) & 4294967295;
        k := k # (k >> 24);
        k := (k * m) & 4294967295;
        h := ((h * m) & 4294967295) # k;
        i := i + 4;
    END LOOP;
    IF n - i >= 3 THEN h := h # (get_byte(data, i + 2)::bigint << 16); END IF;
    IF n - i >= 2 THEN h := h # (get_byte(data, i + 1)::bigint << 8); END IF;
    IF n - i >= 1 THEN
        h := h # get_byte(data, i)::bigint;
        h := (h * m) & 4294967295;
    END IF;
    h := h # (h >> 13);
    h := (h * m) & 4294967295;
    RETURN h # (h >> 15);
END
$$;

-- The partition (= the worker's share) of an area's readings in a topic of `partitions`.
CREATE FUNCTION gridwatch_partition(area_id text, partitions integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ((gridwatch_murmur2(convert_to(area_id, 'UTF8')) & 2147483647) % partitions)::integer
$$;
