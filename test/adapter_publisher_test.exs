defmodule Yggdrasil.AdapterPublisherTest do
  # Publishing through pooled publisher adapter processes (spec section 7):
  # one pool per adapter and namespace, sized by
  # Yggdrasil.Config.publisher_options!/1.
  use Yggdrasil.AdapterCase, async: true

  alias Yggdrasil.Publisher.Pool

  @moduletag :capture_log

  # A namespace of its own with `options`, removed after the test.
  defp namespace!(options) do
    namespace = :"memory_pool_#{System.unique_integer([:positive])}"
    Application.put_env(:yggdrasil, namespace, publisher_options: options)
    on_exit(fn -> Application.delete_env(:yggdrasil, namespace) end)
    namespace
  end

  defp pool!(channel) do
    pool = Yggdrasil.Publisher.whereis(channel)
    assert is_pid(pool)
    pool
  end

  test "without configuration the pool has Yggdrasil.Config.publisher_options!/0" do
    channel = channel!()
    :ok = Yggdrasil.publish(channel, :x)

    expected = Yggdrasil.Config.publisher_options!()
    assert expected == [size: 1, max_overflow: 5]
    status = Pool.status(pool!(channel))
    assert status.size == expected[:size]
    assert status.max_overflow == expected[:max_overflow]
  end

  test "one pool per adapter and namespace, sized by the namespace's publisher_options" do
    namespace = namespace!(size: 3, max_overflow: 2)
    channel = channel!(namespace: namespace)
    :ok = Yggdrasil.publish(channel, :x)

    pool = pool!(channel)
    assert %{size: 3, max_overflow: 2, idle: 3, busy: 0, overflow: 0} = Pool.status(pool)
    assert length(MemoryBroker.publishers(namespace)) == 3

    # Other channels of the namespace share it, by alias or module.
    assert pool!(channel!(namespace: namespace)) == pool
    assert pool!(channel!(namespace: namespace, adapter: Yggdrasil.Adapter.Memory)) == pool
    # Another namespace has its own.
    other = channel!()
    :ok = Yggdrasil.publish(other, :x)
    assert pool!(other) != pool
  end

  test "overflow workers serve bursts, then go; callers beyond them wait in line" do
    namespace = namespace!(size: 2, max_overflow: 1)
    channel = channel!(namespace: namespace)
    :ok = Yggdrasil.subscribe(channel)
    assert_receive {:Y_CONNECTED, ^channel}, @wait
    :ok = Yggdrasil.publish(channel, :warm_up)
    assert_receive {:Y_EVENT, ^channel, :warm_up}, @wait
    pool = pool!(channel)

    :ok = MemoryBroker.set(channel, :hold_publish, self())
    tasks = for n <- 1..4, do: Task.async(fn -> Yggdrasil.publish(channel, n) end)

    # Two permanent workers and one overflow worker are busy; one caller waits.
    held =
      for _ <- 1..3 do
        assert_receive {:hold_publish, worker, ref}, @wait
        {worker, ref}
      end

    workers = held |> Enum.map(&elem(&1, 0)) |> Enum.uniq()
    assert length(workers) == 3
    eventually(fn -> Pool.status(pool).waiting == 1 end)
    assert %{busy: 3, overflow: 1, idle: 0} = Pool.status(pool)
    assert MemoryBroker.publishers(namespace) == Enum.sort(workers)

    # A freed worker goes to the caller in line.
    [{worker, ref} | rest] = held
    MemoryBroker.go(worker, ref)
    assert_receive {:hold_publish, next, next_ref}, @wait
    assert next in workers
    :ok = MemoryBroker.unset(channel, :hold_publish)
    for {worker, ref} <- [{next, next_ref} | rest], do: MemoryBroker.go(worker, ref)

    assert Enum.map(tasks, &Task.await/1) == [:ok, :ok, :ok, :ok]
    received = for _ <- 1..4, do: assert_receive({:Y_EVENT, ^channel, n}, @wait) && n
    assert Enum.sort(received) == [1, 2, 3, 4]

    # The overflow worker is gone once returned with nobody waiting.
    eventually(fn -> Pool.status(pool) == %{Pool.status(pool) | busy: 0, overflow: 0, idle: 2} end)

    eventually(fn -> length(MemoryBroker.publishers(namespace)) == 2 end)
    :ok = Yggdrasil.unsubscribe(channel)
  end

  test "concurrent publishers: every message arrives, in each publisher's order" do
    namespace = namespace!(size: 3, max_overflow: 2)
    channel = channel!(namespace: namespace)
    :ok = Yggdrasil.subscribe(channel)
    assert_receive {:Y_CONNECTED, ^channel}, @wait

    tasks =
      for p <- 1..20 do
        Task.async(fn ->
          for n <- 1..50, do: :ok = Yggdrasil.publish(channel, {p, n})
        end)
      end

    Enum.each(tasks, &Task.await(&1, 10_000))

    received =
      for _ <- 1..1000 do
        assert_receive {:Y_EVENT, ^channel, {p, n}}, 5_000
        {p, n}
      end

    for {p, messages} <- Enum.group_by(received, &elem(&1, 0)) do
      assert Enum.map(messages, &elem(&1, 1)) == Enum.to_list(1..50), "publisher #{p}"
    end

    pool = pool!(channel)
    eventually(fn -> match?(%{busy: 0, overflow: 0, idle: 3, waiting: 0}, Pool.status(pool)) end)
    assert length(MemoryBroker.publishers(namespace)) <= 5
    eventually(fn -> length(MemoryBroker.publishers(namespace)) == 3 end)
    :ok = Yggdrasil.unsubscribe(channel)
  end

  test "a publisher worker that crashes gives {:error, _} and is replaced" do
    namespace = namespace!(size: 1, max_overflow: 0)
    crashing = channel!(namespace: namespace)
    healthy = channel!(namespace: namespace)
    :ok = Yggdrasil.subscribe(healthy)
    assert_receive {:Y_CONNECTED, ^healthy}, @wait

    :ok = Yggdrasil.publish(healthy, :before)
    assert_receive {:Y_EVENT, ^healthy, :before}, @wait
    [worker] = MemoryBroker.publishers(namespace)

    :ok = MemoryBroker.set(crashing, :crash_publish, true)
    ref = Process.monitor(worker)
    assert {:error, _} = Yggdrasil.publish(crashing, :boom)
    assert_receive {:DOWN, ^ref, :process, ^worker, {%RuntimeError{}, _}}, @wait

    # The next publish gets the replacement, never the dead worker.
    for n <- 1..5, do: assert(:ok = Yggdrasil.publish(healthy, n))
    assert events_until_sentinel(healthy) == [1, 2, 3, 4, 5]
    assert [fresh] = MemoryBroker.publishers(namespace)
    assert fresh != worker

    # An idle worker that dies is replaced, too.
    kill(fresh)
    assert :ok = Yggdrasil.publish(healthy, :after_kill)
    assert events_until_sentinel(healthy) == [:after_kill]
    assert %{size: 1, idle: 1, busy: 0} = Pool.status(pool!(healthy))
    :ok = Yggdrasil.unsubscribe(healthy)
  end

  test "callers that die holding or waiting for a worker give their place back" do
    namespace = namespace!(size: 1, max_overflow: 0)
    channel = channel!(namespace: namespace)
    :ok = Yggdrasil.publish(channel, :warm_up)
    pool = pool!(channel)
    :ok = MemoryBroker.set(channel, :hold_publish, self())

    holder = spawn(fn -> Yggdrasil.publish(channel, :held) end)
    assert_receive {:hold_publish, worker, ref}, @wait
    waiter = spawn(fn -> Yggdrasil.publish(channel, :waiting) end)
    eventually(fn -> Pool.status(pool).waiting == 1 end)

    kill(waiter)
    eventually(fn -> Pool.status(pool).waiting == 0 end)
    kill(holder)
    eventually(fn -> match?(%{busy: 0, idle: 1}, Pool.status(pool)) end)

    :ok = MemoryBroker.unset(channel, :hold_publish)
    MemoryBroker.go(worker, ref)
    assert :ok = Yggdrasil.publish(channel, :works)
    assert [^worker] = MemoryBroker.publishers(namespace)
  end

  test "a publisher that cannot start gives {:error, _}" do
    :ok = Yggdrasil.Adapter.NotAnAdapter.register()
    channel = [name: "x", adapter: :not_an_adapter]
    assert {:error, _} = Yggdrasil.publish(channel, :x)
    assert {:error, _} = Yggdrasil.publish(channel, :x)
    assert {:error, _} = Yggdrasil.publish(channel!(), :x, :not_a_keyword)
  end
end
