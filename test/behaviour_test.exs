defmodule Yggdrasil.BehaviourTest do
  # Spec section 3: `use Yggdrasil`, Yggdrasil.start_link/3 and stop/3.
  use ExUnit.Case, async: true

  import Yggdrasil.Test.Helpers

  # assert_receive waits this long (ms) for other processes on a busy machine.
  @timeout 2_000

  import ExUnit.CaptureLog

  require Logger

  alias Yggdrasil.Channel

  # Only the defaults: its events are seen through the channel names, which
  # carry the test process (`{:behaviour, test_pid, tag}`).
  defmodule Defaults do
    use Yggdrasil
  end

  # Default init/1, but the callbacks report to the pid in the channel name.
  defmodule Reporter do
    use Yggdrasil

    @impl Yggdrasil
    def handle_connect(%Channel{name: {_, test, _}} = channel, state) do
      send(test, {:connect, self(), channel, state})
      {:ok, state}
    end

    @impl Yggdrasil
    def handle_disconnect(%Channel{name: {_, test, _}} = channel, state) do
      send(test, {:disconnect, self(), channel, state})
      {:ok, state}
    end

    @impl Yggdrasil
    def handle_event(%Channel{name: {_, test, _}} = channel, message, state) do
      send(test, {:event, self(), channel, message, state})
      {:ok, state}
    end
  end

  # Everything overridden; the state is the test pid plus a counter, and
  # events are commands that make the callbacks return each result kind.
  defmodule Scripted do
    use Yggdrasil, restart: :transient, shutdown: 1_234, id: :scripted

    def start_link({test, channels}, options \\ []) do
      Yggdrasil.start_link(__MODULE__, {test, channels}, options)
    end

    @impl Yggdrasil
    def init({test, :refuse}), do: {:stop, {:refused, test}}

    def init({test, channels}) do
      send(test, {:init, self()})
      {:subscribe, channels, %{test: test, events: 0}}
    end

    @impl Yggdrasil
    def handle_connect(channel, %{test: test} = state) do
      send(test, {:connect, self(), channel})
      {:ok, state}
    end

    @impl Yggdrasil
    def handle_disconnect(channel, %{test: test} = state) do
      send(test, {:disconnect, self(), channel})
      {:ok, state}
    end

    @impl Yggdrasil
    def handle_event(channel, message, %{test: test, events: events} = state) do
      state = %{state | events: events + 1}
      send(test, {:event, self(), channel, message, state.events})

      case message do
        {:subscribe, channels} -> {:subscribe, channels, state}
        {:unsubscribe, channels} -> {:unsubscribe, channels, state}
        {:stop, reason} -> {:stop, reason, state}
        _ -> {:ok, state}
      end
    end

    @impl Yggdrasil
    def terminate(reason, %{test: test, events: events}) do
      send(test, {:terminate, self(), reason, events})
      :ignored
    end
  end

  defp channel!(tag \\ :c) do
    {:ok, channel} = Yggdrasil.gen_channel(name: {:behaviour, self(), {tag, make_ref()}})
    channel
  end

  # A call after an init/continue makes sure pending callbacks have run.
  defp sync(pid), do: :sys.get_state(pid)

  describe "default callbacks" do
    test "init/1 with a channel list subscribes to every channel, state nil" do
      [a, b] = [channel!(:a), channel!(:b)]
      {:ok, pid} = Yggdrasil.start_link(Reporter, [a, Map.from_struct(b)])

      assert_receive {:connect, ^pid, ^a, nil}, @timeout
      assert_receive {:connect, ^pid, ^b, nil}, @timeout

      :ok = Yggdrasil.publish(a, "to a")
      :ok = Yggdrasil.publish(b, "to b")
      assert_receive {:event, ^pid, ^a, "to a", nil}, @timeout
      assert_receive {:event, ^pid, ^b, "to b", nil}, @timeout

      assert :ok = Yggdrasil.stop(pid)
      refute Process.alive?(pid)
    end

    test "a module with only `use Yggdrasil` runs, subscribes and ignores events" do
      channel = channel!()
      {:ok, pid} = Yggdrasil.start_link(Defaults, [channel])
      sync(pid)
      assert Yggdrasil.Engine.subscribed?(Channel.key(channel), pid)

      :ok = Yggdrasil.publish(channel, "ignored")
      send(pid, :not_a_yggdrasil_message)
      sync(pid)
      assert Process.alive?(pid)
      assert :ok = Yggdrasil.stop(pid)
    end

    test "default init/1 rejects a non-list argument" do
      Process.flag(:trap_exit, true)
      assert {:error, {:function_clause, _}} = Yggdrasil.start_link(Defaults, :not_a_list)
    end

    test "default terminate/2 and the callbacks' defaults" do
      channel = channel!()
      assert Defaults.init([channel]) == {:subscribe, [channel], nil}
      assert Defaults.handle_connect(channel, :s) == {:ok, :s}
      assert Defaults.handle_disconnect(channel, :s) == {:ok, :s}
      assert Defaults.handle_event(channel, :m, :s) == {:ok, :s}
      assert Defaults.terminate(:normal, :s) == :ok
    end

    test "options are passed to GenServer.start_link (a name)" do
      channel = channel!()
      name = :"behaviour_test_#{System.unique_integer([:positive])}"
      {:ok, pid} = Yggdrasil.start_link(Reporter, [channel], name: name)
      assert Process.whereis(name) == pid
      assert_receive {:connect, ^pid, ^channel, nil}, @timeout
      assert :ok = Yggdrasil.stop(name)
    end
  end

  describe "life cycle" do
    test "init, connect, event, disconnect, terminate are called in order" do
      channel = channel!()
      {:ok, pid} = Scripted.start_link({self(), [channel]})

      assert_receive {:init, ^pid}, @timeout
      assert_receive {:connect, ^pid, ^channel}, @timeout

      :ok = Yggdrasil.publish(channel, "one", metadata: :meta)
      assert_receive {:event, ^pid, %Channel{metadata: :meta} = received, "one", 1}, @timeout
      assert %{received | metadata: nil} == channel

      :ok = Yggdrasil.publish(channel, "two")
      assert_receive {:event, ^pid, ^channel, "two", 2}, @timeout

      assert :ok = Yggdrasil.stop(pid, :normal)
      assert_receive {:terminate, ^pid, :normal, 2}, @timeout
    end

    test "init/1 returning {:stop, reason} makes start_link fail with it" do
      Process.flag(:trap_exit, true)
      test = self()
      assert {:error, {:refused, ^test}} = Scripted.start_link({test, :refuse})
      refute_received {:terminate, _, _, _}
    end

    test "a callback returning {:subscribe, channels, state} subscribes" do
      [first, second] = [channel!(:first), channel!(:second)]
      {:ok, pid} = Scripted.start_link({self(), [first]})
      assert_receive {:connect, ^pid, ^first}, @timeout

      :ok = Yggdrasil.publish(first, {:subscribe, [second]})
      assert_receive {:event, ^pid, ^first, {:subscribe, [^second]}, 1}, @timeout
      assert_receive {:connect, ^pid, ^second}, @timeout

      :ok = Yggdrasil.publish(second, "on second")
      assert_receive {:event, ^pid, ^second, "on second", 2}, @timeout
      Yggdrasil.stop(pid)
    end

    test "a callback returning {:unsubscribe, channels, state} unsubscribes" do
      [a, b] = [channel!(:a), channel!(:b)]
      {:ok, pid} = Scripted.start_link({self(), [a, b]})
      assert_receive {:connect, ^pid, ^a}, @timeout
      assert_receive {:connect, ^pid, ^b}, @timeout

      :ok = Yggdrasil.publish(a, {:unsubscribe, [b]})
      assert_receive {:event, ^pid, ^a, {:unsubscribe, [^b]}, 1}, @timeout
      assert_receive {:disconnect, ^pid, ^b}, @timeout

      :ok = Yggdrasil.publish(b, "nobody")
      :ok = Yggdrasil.publish(a, "still here")
      # Events from one publisher keep their order: "nobody" would be first.
      assert_receive {:event, ^pid, ^a, "still here", 2}, @timeout
      refute_received {:event, ^pid, ^b, _, _}
      refute Yggdrasil.Engine.subscribed?(Channel.key(b), pid)
      Yggdrasil.stop(pid)
    end

    test "a callback returning {:stop, reason, state} stops and calls terminate/2" do
      Process.flag(:trap_exit, true)
      channel = channel!()
      {:ok, pid} = Scripted.start_link({self(), [channel]})
      assert_receive {:connect, ^pid, ^channel}, @timeout

      # The GenServer's crash report for a non-normal stop is expected.
      capture_log(fn ->
        :ok = Yggdrasil.publish(channel, {:stop, :enough})
        assert_receive {:terminate, ^pid, :enough, 1}, @timeout
        assert_receive {:EXIT, ^pid, :enough}, @timeout
        Logger.flush()
      end)

      # And the dead subscriber is dropped from the channel.
      eventually(fn -> Yggdrasil.Engine.subscriber_count(Channel.key(channel)) == 0 end)
    end

    test "stop/3 with a reason and a timeout calls terminate/2 with that reason" do
      Process.flag(:trap_exit, true)
      channel = channel!()
      {:ok, pid} = Scripted.start_link({self(), [channel]})
      assert_receive {:connect, ^pid, ^channel}, @timeout
      assert :ok = Yggdrasil.stop(pid, {:shutdown, :test}, 5_000)
      assert_receive {:terminate, ^pid, {:shutdown, :test}, 0}, @timeout
    end

    test "a subscription that fails inside the wrapper is logged" do
      good = channel!()
      bad = [name: {:behaviour, self(), :bad}, adapter: :no_such_adapter]

      log =
        capture_log(fn ->
          {:ok, pid} = Scripted.start_link({self(), [bad, good]})
          assert_receive {:connect, ^pid, ^good}, @timeout
          sync(pid)
          Yggdrasil.stop(pid)
          Logger.flush()
        end)

      assert log =~ "Scripted"
      assert log =~ "subscribe"
      assert log =~ "no_such_adapter"
    end

    test "a failing {:subscribe, ...} from a callback is logged too" do
      channel = channel!()

      log =
        capture_log(fn ->
          {:ok, pid} = Scripted.start_link({self(), [channel]})
          assert_receive {:connect, ^pid, ^channel}, @timeout
          :ok = Yggdrasil.publish(channel, {:subscribe, ["not a channel"]})
          assert_receive {:event, ^pid, _, _, 1}, @timeout
          sync(pid)
          Yggdrasil.stop(pid)
          Logger.flush()
        end)

      assert log =~ "not a channel"
    end
  end

  describe "child_spec/1" do
    test "merges the options given to `use`, like use GenServer" do
      assert Scripted.child_spec(:arg) == %{
               id: :scripted,
               start: {Scripted, :start_link, [:arg]},
               restart: :transient,
               shutdown: 1_234
             }
    end

    test "without options it is a plain worker spec" do
      assert Reporter.child_spec([:x]) == %{id: Reporter, start: {Reporter, :start_link, [[:x]]}}
    end

    test "is usable under a supervisor" do
      channel = channel!()
      pid = start_supervised!({Scripted, {self(), [channel]}})
      assert_receive {:connect, ^pid, ^channel}, @timeout
      :ok = Yggdrasil.publish(channel, "supervised")
      assert_receive {:event, ^pid, ^channel, "supervised", 1}, @timeout
      ref = Process.monitor(pid)
      :ok = stop_supervised(:scripted)
      # Like Yggdrasil 6 the wrapper does not trap exits: a supervisor's
      # shutdown ends it without terminate/2.
      assert_receive {:DOWN, ^ref, :process, ^pid, :shutdown}, @timeout
    end
  end
end
