defmodule Yggdrasil.Test.Helpers do
  @moduledoc false
  # What the test files share: polling for asynchronous work, collecting a
  # channel's events, processes that only wait, a fresh VM for one script.

  import ExUnit.Assertions

  alias Yggdrasil.Channel

  @doc "The broker senders (`Yggdrasil.Broker.Sender`), one per scheduler."
  def broker_senders,
    do: for({_, pid, _, _} <- Supervisor.which_children(Yggdrasil.Broker.Sender), do: pid)

  @doc """
  Polls `fun` until it returns a truthy value, and returns it; fails with
  `what` after `timeout` ms. For work that finishes asynchronously
  (monitors, adapter starts, other nodes); it asserts no duration.
  """
  def eventually(fun, what \\ "condition", timeout \\ 10_000) do
    poll(fun, what, System.monotonic_time(:millisecond) + timeout)
  end

  defp poll(fun, what, deadline) do
    case fun.() do
      result when result in [nil, false] ->
        if System.monotonic_time(:millisecond) > deadline,
          do: flunk("timed out waiting for: #{what}")

        Process.sleep(5)
        poll(fun, what, deadline)

      result ->
        result
    end
  end

  @doc """
  Publishes a sentinel on `channel` and returns the `:Y_EVENT` payloads of
  `channel` received before it: one publisher's messages arrive in order,
  so this counts deliveries without sleeping.
  """
  def events_until_sentinel(channel) do
    sentinel =
      case channel.transformer do
        :json -> %{"sentinel" => System.unique_integer([:positive])}
        _ -> {:sentinel, make_ref()}
      end

    :ok = Yggdrasil.publish(channel, sentinel)
    collect(channel.name, sentinel, [])
  end

  defp collect(name, sentinel, acc) do
    receive do
      {:Y_EVENT, %Channel{name: ^name}, ^sentinel} -> Enum.reverse(acc)
      {:Y_EVENT, %Channel{name: ^name}, message} -> collect(name, sentinel, [message | acc])
    after
      5_000 -> flunk("sentinel not received; got so far: #{inspect(Enum.reverse(acc))}")
    end
  end

  @doc """
  A process body that forwards every message it gets to `parent` as
  `{:forwarded, self(), message}`, for subscribers living in other processes.
  """
  def forward_all(parent) do
    receive do
      message ->
        send(parent, {:forwarded, self(), message})
        forward_all(parent)
    end
  end

  @doc "A process body that drops every message until `:stop`."
  def sink do
    receive do
      :stop -> :ok
      _ -> sink()
    end
  end

  @doc "Kills `pid` and waits until it is gone."
  def kill(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    after
      5_000 -> flunk("#{inspect(pid)} did not die")
    end
  end

  @doc """
  Runs `code` in a fresh VM (`elixir -e`) whose code path has this build's
  ebin, or `ebin`; returns everything it printed. For what must not happen
  in the test VM itself: no application, no NIF library, a reload.
  """
  def run_elixir(code, ebin \\ Path.join(:code.lib_dir(:yggdrasil), "ebin")) do
    elixir = System.find_executable("elixir") || flunk("elixir not on PATH")
    {out, _status} = System.cmd(elixir, ["-pa", ebin, "-e", code], stderr_to_stdout: true)
    out
  end

  @doc """
  A copy of the compiled application (ebin, and `priv/native` with the NIF
  library only when `nif?`) in a temporary directory removed when the test
  exits; returns the copy's directory.
  """
  def copy_app(nif?) do
    tmp_dir = Path.join(System.tmp_dir!(), "ygg_app_#{System.unique_integer([:positive])}")
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(tmp_dir) end)
    app = Path.join(tmp_dir, "yggdrasil")
    File.mkdir_p!(Path.join(app, "priv/native"))
    File.cp_r!(Path.join(:code.lib_dir(:yggdrasil), "ebin"), Path.join(app, "ebin"))
    if nif?, do: File.cp!(nif_library(), Path.join(app, "priv/native/libyggdrasil_nif.so"))
    app
  end

  @doc "The NIF library this build loaded."
  def nif_library, do: Path.join(:code.priv_dir(:yggdrasil), "native/libyggdrasil_nif.so")

  @doc "The VM's resident memory in bytes (Linux)."
  def rss do
    [kb] =
      for line <- File.read!("/proc/self/status") |> String.split("\n"),
          String.starts_with?(line, "VmRSS:"),
          do: line |> String.split() |> Enum.at(1) |> String.to_integer()

    kb * 1024
  end
end
