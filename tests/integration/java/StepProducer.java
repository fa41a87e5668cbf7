// Produces a recorded list of steps with the Apache Kafka Java client, so the tests can
// check the pipeline against the client most services use, not only Python's.
//
//   java -cp <kafka-clients and its dependencies> StepProducer.java \
//        <bootstrap> <topic> <compression> <steps file>
//
// The steps file is a sequence of records, big-endian (java.io.DataInputStream):
//   'P' key value   a plain send (idempotent producer, acks=all)
//   'T' key value   a send of the transactional producer (inside a transaction)
//   'B' / 'C' / 'A' begin, commit, abort the transactional producer's transaction
// where key and value are an int length (-1 for a null key) followed by the bytes.
// Sends are acknowledged before the next step of another kind and at the end; any
// failure is printed and the program exits 1.
import java.io.BufferedInputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.FileInputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class StepProducer {
    private static Properties common(String bootstrap, String compression) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.MAX_REQUEST_SIZE_CONFIG, Integer.toString(8 * 1024 * 1024));
        return p;
    }

    private static byte[] read(DataInputStream in, boolean nullable) throws Exception {
        int length = in.readInt();
        if (length < 0 && nullable) {
            return null;
        }
        byte[] bytes = new byte[length];
        in.readFully(bytes);
        return bytes;
    }

    private static void acknowledge(KafkaProducer<byte[], byte[]> producer,
                                    List<Future<RecordMetadata>> sent) throws Exception {
        producer.flush();
        for (Future<RecordMetadata> future : sent) {
            future.get();
        }
        sent.clear();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: StepProducer <bootstrap> <topic> <compression> <steps file>");
            System.exit(2);
        }
        String bootstrap = args[0];
        String topic = args[1];
        String compression = args[2];
        Properties transactionalConfig = common(bootstrap, compression);
        transactionalConfig.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG,
                                "govmeter-java-" + UUID.randomUUID());
        int sentPlain = 0;
        int sentTransactional = 0;
        try (KafkaProducer<byte[], byte[]> plain = new KafkaProducer<>(common(bootstrap, compression));
             KafkaProducer<byte[], byte[]> transactional = new KafkaProducer<>(transactionalConfig);
             DataInputStream in = new DataInputStream(
                     new BufferedInputStream(new FileInputStream(args[3])))) {
            transactional.initTransactions();
            List<Future<RecordMetadata>> plainSent = new ArrayList<>();
            List<Future<RecordMetadata>> transactionalSent = new ArrayList<>();
            while (true) {
                int op;
                try {
                    op = in.readUnsignedByte();
                } catch (EOFException end) {
                    break;
                }
                switch (op) {
                    case 'P' -> {
                        acknowledge(transactional, transactionalSent);
                        byte[] key = read(in, true);
                        byte[] value = read(in, false);
                        plainSent.add(plain.send(new ProducerRecord<>(topic, key, value)));
                        sentPlain++;
                    }
                    case 'T' -> {
                        acknowledge(plain, plainSent);
                        byte[] key = read(in, true);
                        byte[] value = read(in, false);
                        transactionalSent.add(transactional.send(new ProducerRecord<>(topic, key, value)));
                        sentTransactional++;
                    }
                    case 'B' -> {
                        acknowledge(plain, plainSent);
                        transactional.beginTransaction();
                    }
                    case 'C' -> {
                        acknowledge(plain, plainSent);
                        acknowledge(transactional, transactionalSent);
                        transactional.commitTransaction();
                    }
                    case 'A' -> {
                        acknowledge(plain, plainSent);
                        acknowledge(transactional, transactionalSent);
                        transactional.abortTransaction();
                    }
                    default -> throw new IllegalArgumentException(
                            args[3] + ": unknown step '" + (char) op + "'");
                }
            }
            acknowledge(plain, plainSent);
            acknowledge(transactional, transactionalSent);
        } catch (Exception error) {
            System.err.println("StepProducer failed: " + error);
            System.exit(1);
        }
        System.out.println("sent " + sentPlain + " plain and " + sentTransactional
                           + " transactional message(s) to " + topic);
    }
}
